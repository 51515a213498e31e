"""Sinks: the completion line, batching, and failures reaching the job."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest

from taskhub.builtin.sinks.file_log import FileLog
from taskhub.builtin.sinks.formatting import completion_line
from taskhub.components import Completion, Task


def completion(user_id: str = "user123", job_id: str = "j1", attempt: int = 1) -> Completion:
    task = Task("log_completion", job_id, user_id, None, attempt, datetime(2026, 1, 1, tzinfo=UTC))
    return Completion(task, None, datetime(2026, 11, 28, 21, 52, 33, 123456, tzinfo=UTC))


def test_line_is_the_seeds_sentence_plus_job_and_attempt() -> None:
    assert completion_line(completion()) == (
        "Task completed for user user123 at 2026-11-28T21:52:33.123Z "
        "(task=log_completion job=j1 attempt=1)"
    )


@pytest.mark.parametrize(
    ("user_id", "shown"),
    [
        ("a\nTask completed for user admin", "a\\x0aTask completed for user admin"),
        ("tab\there", "tab\\x09here"),
        ("back\\slash", "back\\\\slash"),
        ("line\u2028sep", "line\\u2028sep"),
        ("ünïcødé ok", "ünïcødé ok"),
    ],
)
def test_user_ids_cannot_forge_or_break_lines(user_id: str, shown: str) -> None:
    line = completion_line(completion(user_id))
    assert f"for user {shown} at" in line
    assert "\n" not in line


async def test_file_log_writes_concurrent_completions_in_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = FileLog(FileLog.Config(path=str(tmp_path / "task.log")))
    writes: list[int] = []
    original = sink._write

    def counting_write(text: str) -> None:
        writes.append(text.count("\n"))
        original(text)

    monkeypatch.setattr(sink, "_write", counting_write)
    await sink.open()
    await asyncio.gather(*(sink.emit(completion(job_id=f"j{i}")) for i in range(200)))
    await sink.close()
    lines = (tmp_path / "task.log").read_text().splitlines()
    assert sorted(lines) == sorted(completion_line(completion(job_id=f"j{i}")) for i in range(200))
    assert sum(writes) == 200 and len(writes) < 20  # batched, not one write per line


async def test_file_log_appends_and_reports_write_failures(tmp_path: Path) -> None:
    path = tmp_path / "task.log"
    path.write_text("earlier line\n")
    sink = FileLog(FileLog.Config(path=str(path)))
    await sink.open()
    await sink.emit(completion())
    assert sink._file is not None
    sink._file.close()  # a write now fails; emit must raise so the job is retried
    with pytest.raises(ValueError, match="closed file"):
        await sink.emit(completion(job_id="j2"))
    await sink.close()
    assert path.read_text().splitlines()[0] == "earlier line"
    assert len(path.read_text().splitlines()) == 2


async def test_file_log_open_failure_is_an_oserror(tmp_path: Path) -> None:
    sink = FileLog(FileLog.Config(path=str(tmp_path / "no-such-dir" / "task.log")))
    with pytest.raises(FileNotFoundError):
        await sink.open()
