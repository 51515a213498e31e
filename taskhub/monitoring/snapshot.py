"""A queue's state at one moment, for ``taskhub status``: depth, workers, rates, failures.

Queue plugins fill a :class:`QueueSnapshot` from their own store
(:meth:`taskhub.components.QueueBackend.snapshot`); this module only shapes it
and derives rates, so the CLI never imports a queue library.

Rates come from the counters each worker reports with its stats (complete,
failed, and its uptime on its own clock), not from sampling the queue: a job
that finished between two looks is still counted. A worker reports every few
seconds, so a rate is only as fresh as the workers' last reports.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from pydantic import with_config
from typing_extensions import TypedDict

from taskhub.jobs import JobInfo, iso

# The JSON shapes below are the only definition of what ``--json`` and the dashboard's
# summary write: taskhub.web.openapi documents them from these very classes.


@with_config(extra="forbid")
class WorkerJson(TypedDict):
    worker_id: str
    running: int
    last_seen: str | None
    complete: int | None
    failed: int | None
    retried: int | None
    aborted: int | None
    uptime: float | None


@with_config(extra="forbid")
class RatesJson(TypedDict):
    completed_per_s: float | None
    failed_per_s: float | None
    retried_per_s: float | None
    basis: str


@with_config(extra="forbid")
class DeadLetterJson(TypedDict):
    job_id: str
    task: str
    user_id: str
    attempts: int
    failed_at: str | None
    error: str  # the last line of the last error


@with_config(extra="forbid")
class QueueJson(TypedDict):
    queue: str
    taken_at: str | None
    queued: int
    active: int
    scheduled: int
    dead: int
    workers: list[WorkerJson]
    rates: RatesJson
    recent_failures: list[DeadLetterJson]


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

    def to_json(self) -> WorkerJson:
        return {
            "worker_id": self.worker_id,
            "running": self.running,
            "last_seen": iso(self.last_seen),
            "complete": self.complete,
            "failed": self.failed,
            "retried": self.retried,
            "aborted": self.aborted,
            "uptime": self.uptime,
        }


@dataclass(frozen=True, slots=True)
class QueueSnapshot:
    """Counts read together; ``scheduled`` is waiting for a retry delay or an execution limit."""

    queue: str
    taken_at: datetime
    queued: int
    active: int
    scheduled: int
    dead: int
    workers: list[WorkerStatus] = field(default_factory=list)
    recent_failures: list[JobInfo] = field(default_factory=list)  # newest dead letters first

    def to_json(self, rates: Rates | None = None) -> QueueJson:
        return {
            "queue": self.queue,
            "taken_at": iso(self.taken_at),
            "queued": self.queued,
            "active": self.active,
            "scheduled": self.scheduled,
            "dead": self.dead,
            "workers": [worker.to_json() for worker in self.workers],
            "rates": (rates or Rates.of(self)).to_json(),
            "recent_failures": [
                {
                    "job_id": job.job_id,
                    "task": job.task,
                    "user_id": job.user_id,
                    "attempts": job.attempts,
                    "failed_at": iso(job.completed_at),
                    "error": job.error_summary,
                }
                for job in self.recent_failures
            ],
        }


@dataclass(frozen=True, slots=True)
class Rates:
    """Jobs completed and failed per second, and what they are measured over (``basis``)."""

    completed: float | None
    failed: float | None  # jobs out of attempts (dead letters)
    retried: float | None  # failed attempts with attempts left
    basis: str

    @classmethod
    def of(cls, current: QueueSnapshot, baseline: QueueSnapshot | None = None) -> Rates:
        """Counter increase per second of worker uptime since ``baseline``, for the workers
        that reported in both; without such a pair, each worker's average since it started."""
        if baseline is not None:
            before = {w.worker_id: w for w in baseline.workers}
            pairs = [
                (before[w.worker_id], w)
                for w in current.workers
                if w.worker_id in before and measured(w) and measured(before[w.worker_id])
            ]
            span = max(((w.uptime or 0) - (b.uptime or 0) for b, w in pairs), default=0.0)
            if span > 0:
                return cls(
                    completed=sum(delta(b, w, "complete") for b, w in pairs),
                    failed=sum(delta(b, w, "failed") for b, w in pairs),
                    retried=sum(delta(b, w, "retried") for b, w in pairs),
                    basis=f"over the workers' last {span:.0f} s of reports",
                )
        reporting = [w for w in current.workers if measured(w) and (w.uptime or 0) > 0]
        if not reporting:
            return cls(None, None, None, "no worker has reported stats")
        return cls(
            completed=sum((w.complete or 0) / (w.uptime or 1) for w in reporting),
            failed=sum((w.failed or 0) / (w.uptime or 1) for w in reporting),
            retried=sum((w.retried or 0) / (w.uptime or 1) for w in reporting),
            basis="average since each worker started",
        )

    def to_json(self) -> RatesJson:
        return {
            "completed_per_s": self.completed,
            "failed_per_s": self.failed,
            "retried_per_s": self.retried,
            "basis": self.basis,
        }


def measured(worker: WorkerStatus) -> bool:
    return worker.uptime is not None and worker.complete is not None and worker.failed is not None


def delta(before: WorkerStatus, after: WorkerStatus, counter: str) -> float:
    """One worker's rate of ``counter`` between two reports (0 if it has not reported since)."""
    span = (after.uptime or 0) - (before.uptime or 0)
    if span <= 0:
        return 0.0
    return max(0, (getattr(after, counter) or 0) - (getattr(before, counter) or 0)) / span
