"""A Python client for taskhub's HTTP API: :class:`Client` (blocking) and
:class:`AsyncClient` (asyncio), with the same methods.

Needs httpx and pydantic only: nothing here (nor what it imports) needs Redis, Sanic
or a queue library, so an application that only submits tasks can install just
those (``pip install 'taskhub[client]'``, or ``taskhub`` with ``--no-deps`` beside
httpx and pydantic). The types are the server's own models (:mod:`taskhub.web.models`).

May import: taskhub.web.models and taskhub.web.submission (the API's models), and the
public types (taskhub.jobs, taskhub.version); never the server's layers.
"""

from __future__ import annotations

from taskhub.client.aio import AsyncClient
from taskhub.client.errors import (
    ClientError,
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    NotSupported,
    RateLimited,
    Unauthorized,
    Unavailable,
    UnexpectedResponse,
)
from taskhub.client.plans import BatchItem
from taskhub.client.retry import Retry
from taskhub.client.sync import Client
from taskhub.jobs import JobStatus
from taskhub.web.models import FieldProblem, Job, Queued
from taskhub.web.submission import TaskRequest

__all__ = [
    "AsyncClient",
    "BatchItem",
    "Client",
    "ClientError",
    "Conflict",
    "FieldProblem",
    "Forbidden",
    "Invalid",
    "Job",
    "JobStatus",
    "NotFound",
    "NotSupported",
    "Queued",
    "RateLimited",
    "Retry",
    "TaskRequest",
    "Unauthorized",
    "Unavailable",
    "UnexpectedResponse",
]
