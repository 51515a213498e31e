"""Log formats, request ids and secret masking, without a server."""

from __future__ import annotations

import json
import logging
import sys
import textwrap
from pathlib import Path

import pytest

from taskhub.config.loader import load_text
from taskhub.config.secrets import secret_values
from taskhub.errors import ConfigError
from taskhub.hub.kernel import Hub
from taskhub.monitoring import request_id
from taskhub.monitoring.log_context import ContextFilter, job_scope
from taskhub.monitoring.log_format import JsonFormatter, Masker, TextFormatter
from taskhub.monitoring.request_id import accept


def record(message: str = "hello %s", *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            exc_info = sys.exc_info()
    entry = logging.LogRecord("taskhub.test", logging.INFO, __file__, 1, message, args, exc_info)
    ContextFilter().filter(entry)
    return entry


@pytest.mark.parametrize("value", ["abc-123", "x", "A" * 128, "~!@#$%^&*()_+{}|:<>?"])
def test_a_sane_request_id_is_kept(value: str) -> None:
    assert accept(value) == value


@pytest.mark.parametrize(
    "value", [None, "", "a" * 129, "a" * 300, "a b", "a\tb", "a\x01b", "a\x7fb", "é", "a\nb"]
)
def test_an_absent_or_bad_request_id_is_replaced_by_a_new_one(value: str | None) -> None:
    new = accept(value)
    assert new != value and len(new) == 16 and int(new, 16) >= 0


def test_json_lines_carry_time_level_logger_message_and_the_context() -> None:
    formatter = JsonFormatter(Masker())
    with job_scope("job1", "user1", "log_completion", "abc-123"):
        line = formatter.format(record("done %d", 3))
    entry = json.loads(line)
    assert entry.pop("time").endswith("Z")
    assert entry == {
        "level": "INFO",
        "logger": "taskhub.test",
        "message": "done 3",
        "request_id": "abc-123",
        "job_id": "job1",
        "user_id": "user1",
        "task": "log_completion",
    }
    outside = json.loads(formatter.format(record()))
    assert "request_id" not in outside and "job_id" not in outside


def test_json_lines_hold_the_exception_text() -> None:
    entry = json.loads(JsonFormatter(Masker()).format(record(exc=True)))
    assert "ValueError: boom" in entry["exception"] and "Traceback" in entry["exception"]


def test_the_request_id_of_the_context_is_on_the_record() -> None:
    token = request_id.current.set("req-1")
    try:
        assert record().request_id == "req-1"  # type: ignore[attr-defined]
    finally:
        request_id.current.reset(token)


def test_both_formats_mask_secrets_in_messages_and_tracebacks() -> None:
    mask = Masker(["hunter2-secret", "ab"])  # too short to mask: left alone
    text = TextFormatter(mask).format(record("url redis://:hunter2-secret@h ab"))
    assert "hunter2-secret" not in text and "redis://:***@h ab" in text
    entry = json.loads(JsonFormatter(mask).format(record("%s", "x hunter2-secret")))
    assert entry["message"] == "x ***"


def test_secret_values_finds_url_passwords_and_secret_options() -> None:
    raw = load_text(
        textwrap.dedent("""\
            redis: {url: "redis://:p%40ss-word@127.0.0.1:6379/0"}
            limits:
              admin: {enabled: true, token: "${TOKEN}"}
            """),
        "config.yaml",
        {"TOKEN": "admin-token-0123456789"},
    )
    assert secret_values(raw) == {"p%40ss-word", "p@ss-word", "admin-token-0123456789"}


def test_logging_format_is_text_or_json(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("logging:\n  format: json\n")
    assert Hub.from_file(path, env={}).settings.logging.format == "json"
    path.write_text("logging:\n  level: INFO\n  format: xml\n")
    with pytest.raises(ConfigError) as caught:
        Hub.from_file(path, env={})
    assert "line 3: logging.format: input should be 'text' or 'json'" in str(caught.value)
    assert "xml" in str(caught.value)
