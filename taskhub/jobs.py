"""What a job looks like outside its queue: its state, an abort's outcome, ``RetryLater``.

Queue plugins translate their own records into these, so servers and the CLI
never import a queue library.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Any


class RetryLater(Exception):  # a request to the worker, not an error
    """Raised by a handler to run its task again after ``delay`` seconds.

    It uses up an attempt, like a failure (so a task cannot postpone itself
    forever), but it is logged at INFO, not as an error. Once the task has no
    attempts left it becomes a dead letter whose error is ``reason``.
    """

    def __init__(self, delay: float, reason: str = "") -> None:
        if not delay >= 0:
            raise ValueError(f"RetryLater delay must be >= 0 seconds, not {delay!r}")
        self.delay = float(delay)
        self.reason = reason
        super().__init__(f"retry in {self.delay:g} s" + (f": {reason}" if reason else ""))


class JobStatus(enum.StrEnum):
    QUEUED = "queued"  # waiting for a worker (or for a retry's delay to pass)
    ACTIVE = "active"  # a worker runs it
    ABORTING = "aborting"  # abort requested; the worker running it stops it shortly
    COMPLETE = "complete"
    FAILED = "failed"  # every attempt failed: a dead letter
    ABORTED = "aborted"

    @property
    def finished(self) -> bool:
        return self in FINISHED


FINISHED = frozenset({JobStatus.COMPLETE, JobStatus.FAILED, JobStatus.ABORTED})


@dataclass(frozen=True, slots=True)
class JobInfo:
    """One job's state. Times are UTC; ``error`` holds the last failure (a traceback)."""

    job_id: str
    task: str
    user_id: str
    status: JobStatus
    attempts: int
    max_attempts: int
    queued_at: datetime | None = None
    retry_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    result: Any = None
    error: str | None = None

    @property
    def error_summary(self) -> str:
        """The last line of the error (for a traceback, the exception itself)."""
        lines = [line.strip() for line in (self.error or "").splitlines() if line.strip()]
        return lines[-1] if lines else ""

    def to_json(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "task": self.task,
            "user_id": self.user_id,
            "status": self.status.value,
            "attempts": self.attempts,
            "max_attempts": self.max_attempts,
            "queued_at": iso(self.queued_at),
            "retry_at": iso(self.retry_at),
            "started_at": iso(self.started_at),
            "completed_at": iso(self.completed_at),
            "result": self.result,
            "error": self.error,
        }


class AbortOutcome(enum.Enum):
    ABORTED = "aborted"  # it was waiting: removed from the queue
    ABORTING = "aborting"  # it is running: its worker cancels it within about a second
    FINISHED = "finished"  # too late: it had already finished
    UNKNOWN = "unknown"  # no such job (or it expired)


@dataclass(frozen=True, slots=True)
class AbortResult:
    outcome: AbortOutcome
    job: JobInfo | None = None


def iso(moment: datetime | None) -> str | None:
    """ISO-8601 UTC with milliseconds, as JavaScript's toISOString writes it."""
    if moment is None:
        return None
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
