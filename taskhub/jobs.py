"""What a task and its jobs look like outside any queue library.

A handler sees a :class:`Task`, sinks a :class:`Completion`; queue plugins read
each task's :class:`TaskSpec` and translate their own records into
:class:`JobInfo`, :class:`AbortResult` and :class:`QueueSnapshot`, so servers
and the CLI never import a queue library.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, ClassVar, Protocol

from pydantic import AfterValidator, BaseModel, Field

MAX_USER_ID = 256  # characters: the longest user id a job may have
_CONTROL_CHARS = r"\x00-\x1f\x7f-\x9f\u2028\u2029"
_CONTROL = re.compile(f"[{_CONTROL_CHARS}]")
# The same rule for the OpenAPI document, so generated clients and fuzzers know it.
NO_CONTROL = f"^[^{_CONTROL_CHARS}]*$"


def _printable(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters")
    return value


# A user id wherever one is given (POST /task, a schedule): one rule, so a schedule
# never submits as a user the API would refuse.
UserId = Annotated[
    str,
    Field(min_length=1, max_length=MAX_USER_ID, json_schema_extra={"pattern": NO_CONTROL}),
    AfterValidator(_printable),
]
# A job's priority (POST /task ``priority``, a task's default): higher runs first.
MIN_PRIORITY, MAX_PRIORITY = -10, 10
# Jobs per turn a user's weight may give him under fair scheduling.
MAX_WEIGHT = 1_000


@dataclass(frozen=True, slots=True)
class Task:
    """One run of a task, as a handler sees it."""

    name: str
    job_id: str
    user_id: str
    payload: Any
    attempt: int
    enqueued_at: datetime


@dataclass(frozen=True, slots=True)
class Completion:
    """A task that finished successfully, as sinks see it."""

    task: Task
    result: Any
    completed_at: datetime


@dataclass(frozen=True, slots=True)
class Failure:
    """A job that used every attempt (now a dead letter), as sinks see it.

    ``task`` is its last attempt; ``error`` that attempt's error (a traceback), or
    ``worker lost: ...`` when its worker died during it (the sweep made it a dead letter).
    """

    task: Task
    error: str
    failed_at: datetime


class Handler(Protocol):
    """What a :class:`TaskSpec` runs: a ``taskhub.TaskHandler``."""

    name: ClassVar[str]
    Payload: ClassVar[type[BaseModel] | None]

    @property
    def config(self) -> BaseModel: ...

    async def run(self, task: Task) -> Any: ...


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """A task clients may submit, as config defines it: its handler and job options.

    An option left ``None`` takes the queue's default; the bounds are config's
    (:class:`taskhub.config.models.JobOptions`).
    """

    name: str
    handler: Handler
    retries: int | None = None
    timeout: int | None = None
    retry_delay: float | None = None
    retry_backoff: float | None = None
    heartbeat: float | None = None
    cost: int = 1
    priority: int = 0  # jobs' default priority; higher runs first


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
    """Where a job is in its life, as ``GET /task/{id}`` and the CLI show it."""

    QUEUED = "queued"  # waiting for a worker (or for a retry's delay to pass)
    SCHEDULED = "scheduled"  # submitted with a delay: waits for its run_at
    ACTIVE = "active"  # a worker runs it
    ABORTING = "aborting"  # abort requested; the worker running it stops it shortly
    COMPLETE = "complete"
    FAILED = "failed"  # every attempt failed: a dead letter
    ABORTED = "aborted"

    @property
    def finished(self) -> bool:
        return self in FINISHED


FINISHED = frozenset({JobStatus.COMPLETE, JobStatus.FAILED, JobStatus.ABORTED})
# The longest wait for a job to settle a client may ask for (GET /task/{id}?wait=N), in s.
MAX_WAIT = 30.0


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
    run_at: datetime | None = None  # a delayed job's run time, while it is scheduled

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
            "run_at": iso(self.run_at),
            "retry_at": iso(self.retry_at),
            "started_at": iso(self.started_at),
            "completed_at": iso(self.completed_at),
            "result": self.result,
            "error": self.error,
        }


class AbortOutcome(enum.Enum):
    """What an abort request did, which decides its HTTP answer (200, 202, 409 or 404)."""

    ABORTED = "aborted"  # it was waiting: removed from the queue
    ABORTING = "aborting"  # it is running: it ends aborted (its worker cancels it)
    FINISHED = "finished"  # too late: it had already finished
    UNKNOWN = "unknown"  # no such job (or it expired)


@dataclass(frozen=True, slots=True)
class AbortResult:
    """An abort's outcome, and the job as it stands after it (None: no such job)."""

    outcome: AbortOutcome
    job: JobInfo | None = None


def iso(moment: datetime | None) -> str | None:
    """ISO-8601 UTC with milliseconds, as JavaScript's toISOString writes it."""
    if moment is None:
        return None
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    """One worker as it last reported itself; ``None`` where it has not (yet)."""

    worker_id: str
    running: int  # jobs in the active list claimed by this worker, read from the jobs
    last_seen: datetime | None = None  # when it last wrote its stats
    complete: int | None = None  # counters since the worker started
    failed: int | None = None  # out of attempts: dead letters
    retried: int | None = None  # attempts that failed with attempts left
    aborted: int | None = None
    uptime: float | None = None  # seconds, on the worker's clock, at its last report


@dataclass(frozen=True, slots=True)
class QueueSnapshot:
    """A queue's counts read together, for ``taskhub status`` and the dashboard.

    ``scheduled`` is waiting for a retry delay, an execution limit or a run time
    (a delayed job). ``top_users``: with fairness user, the users holding the most
    queued jobs, most first.
    """

    queue: str
    taken_at: datetime
    queued: int
    active: int
    scheduled: int
    dead: int
    workers: list[WorkerStatus] = field(default_factory=list)
    recent_failures: list[JobInfo] = field(default_factory=list)  # newest dead letters first
    fairness: str = "none"
    top_users: list[tuple[str, int]] = field(default_factory=list)
