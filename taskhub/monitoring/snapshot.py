"""A queue's state at one moment, as JSON and with rates: ``taskhub status`` and the dashboard.

Queue plugins fill a :class:`taskhub.jobs.QueueSnapshot` from their own store
(:meth:`taskhub.components.QueueBackend.snapshot`); this module only shapes it
and derives rates, so the CLI never imports a queue library.

Rates come from the counters each worker reports with its stats (complete,
failed, and its uptime on its own clock), not from sampling the queue: a job
that finished between two looks is still counted. A worker reports every few
seconds, so a rate is only as fresh as the workers' last reports.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import with_config
from typing_extensions import TypedDict

from taskhub.jobs import QueueSnapshot, WorkerStatus, iso

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
class UserBacklogJson(TypedDict):
    user_id: str
    queued: int


@with_config(extra="forbid")
class QueueJson(TypedDict):
    queue: str
    taken_at: str | None
    queued: int
    active: int
    scheduled: int
    dead: int
    fairness: str
    top_users: list[UserBacklogJson]
    workers: list[WorkerJson]
    rates: RatesJson
    recent_failures: list[DeadLetterJson]


def worker_json(worker: WorkerStatus) -> WorkerJson:
    return {
        "worker_id": worker.worker_id,
        "running": worker.running,
        "last_seen": iso(worker.last_seen),
        "complete": worker.complete,
        "failed": worker.failed,
        "retried": worker.retried,
        "aborted": worker.aborted,
        "uptime": worker.uptime,
    }


def queue_json(snapshot: QueueSnapshot, rates: Rates | None = None) -> QueueJson:
    """``taskhub status --json`` and the dashboard's ``queue``."""
    return {
        "queue": snapshot.queue,
        "taken_at": iso(snapshot.taken_at),
        "queued": snapshot.queued,
        "active": snapshot.active,
        "scheduled": snapshot.scheduled,
        "dead": snapshot.dead,
        "fairness": snapshot.fairness,
        "top_users": [{"user_id": user, "queued": n} for user, n in snapshot.top_users],
        "workers": [worker_json(worker) for worker in snapshot.workers],
        "rates": (rates or Rates.of(snapshot)).to_json(),
        "recent_failures": [
            {
                "job_id": job.job_id,
                "task": job.task,
                "user_id": job.user_id,
                "attempts": job.attempts,
                "failed_at": iso(job.completed_at),
                "error": job.error_summary,
            }
            for job in snapshot.recent_failures
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
