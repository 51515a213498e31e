"""The completion line the text sinks write, in the seed's words plus what finds duplicates."""

from __future__ import annotations

import re

from taskhub import Completion
from taskhub.jobs import iso

_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\\]")


def _escape(match: re.Match[str]) -> str:
    char = match.group(0)
    return (
        "\\\\"
        if char == "\\"
        else f"\\x{ord(char):02x}"
        if ord(char) < 256
        else f"\\u{ord(char):04x}"
    )


def printable(text: str) -> str:
    """Escape anything that could break or forge a log line."""
    return _UNPRINTABLE.sub(_escape, text)


def completion_line(completion: Completion) -> str:
    """``Task completed for user U at 2026-01-01T00:00:00.000Z (task=T job=J attempt=N)``.

    The timestamp is ISO-8601 UTC with milliseconds, as JavaScript's toISOString
    writes it. The job id and attempt let a re-run after a crash be told apart
    from a genuine second task.
    """
    task = completion.task
    stamp = iso(completion.completed_at)
    return (
        f"Task completed for user {printable(task.user_id)} at {stamp} "
        f"(task={task.name} job={task.job_id} attempt={task.attempt})"
    )
