"""taskhub: admit tasks over HTTP, rate-limit them per user in Redis, run them on workers.

The public API for plugin authors is re-exported here.
"""

from __future__ import annotations

__version__ = "0.1.0"

from taskhub.components import (
    Authenticator,
    Completion,
    Limiter,
    Options,
    PreparedJob,
    Principal,
    QueueBackend,
    RatePolicy,
    Server,
    Sink,
    Task,
    TaskHandler,
    TaskSpec,
    Unauthenticated,
)
from taskhub.hookspecs import hookimpl
from taskhub.jobs import AbortOutcome, AbortResult, JobInfo, JobStatus, RetryLater

__all__ = [
    "AbortOutcome",
    "AbortResult",
    "Authenticator",
    "Completion",
    "JobInfo",
    "JobStatus",
    "Limiter",
    "Options",
    "PreparedJob",
    "Principal",
    "QueueBackend",
    "RatePolicy",
    "RetryLater",
    "Server",
    "Sink",
    "Task",
    "TaskHandler",
    "TaskSpec",
    "Unauthenticated",
    "__version__",
    "hookimpl",
]
