"""What a log record is about: its request id and, on a worker, the job it runs.

A filter on taskhub's log handler copies these from context variables onto each
record, so a formatter can write them without any caller passing them along.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from taskhub.monitoring import request_id


@dataclass(frozen=True, slots=True)
class JobFields:
    job_id: str
    user_id: str
    task: str


current_job: ContextVar[JobFields | None] = ContextVar("taskhub_job", default=None)


@contextmanager
def job_scope(job_id: str, user_id: str, task: str, request: str | None) -> Iterator[None]:
    """Within: log records carry this job's fields and the request id it was submitted with."""
    job_token = current_job.set(JobFields(job_id, user_id, task))
    request_token = request_id.current.set(request)
    try:
        yield
    finally:
        request_id.current.reset(request_token)
        current_job.reset(job_token)


class ContextFilter(logging.Filter):
    """Stamp ``request_id`` (and ``job_id``, ``user_id``, ``task``) onto every record.

    Fields a caller passed with ``extra=`` are kept.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        fields = record.__dict__
        if "request_id" not in fields:
            record.request_id = request_id.current.get()
        job = current_job.get()
        if job is not None:
            fields.setdefault("job_id", job.job_id)
            fields.setdefault("user_id", job.user_id)
            fields.setdefault("task", job.task)
        return True
