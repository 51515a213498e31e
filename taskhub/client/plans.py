"""What each client method does, without doing any I/O: a plan, a generator that yields
a :class:`Call` (send this request, give me the answer) or a :class:`Sleep`, and
returns the method's result. :class:`~taskhub.client.Client` runs plans with blocking
calls, :class:`~taskhub.client.AsyncClient` with awaits, so both behave the same:
retries, deadlines and waiting are written once, here.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from taskhub.client.answers import answer, invalid, rate_limited, typed
from taskhub.client.errors import ClientError, Invalid, NotSupported, RateLimited, Unavailable
from taskhub.client.retry import Attempts, Retry
from taskhub.web.models import Job, Queued

T = TypeVar("T")

MAX_WAIT = 30.0  # the longest ?wait= the server takes (seconds)
IGNORED_WAIT = 1.0  # a long poll at least this long that answers in half of it was ignored
POLL_FIRST, POLL_MAX = 0.05, 1.0  # polling's backoff when the server cannot wait (seconds)

Reply = httpx.Response | httpx.TransportError
BatchItem = Queued | RateLimited | Invalid


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One request, and how to read its answer."""

    method: str
    path: str
    read: Mapping[int, Callable[[Any], T]]
    json: Any = None
    params: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    extra_timeout: float = 0.0  # seconds the server may hold the answer (a long poll)
    idempotency_key: str | None = None

    def result(self, reply: Reply) -> T:
        if isinstance(reply, httpx.TransportError):
            raise Unavailable(
                f"no answer to {self.method} {target(reply, self.path)}: "
                f"{type(reply).__name__}: {reply}",
                idempotency_key=self.idempotency_key,
            ) from reply
        return answer(reply, self.read)


def target(error: httpx.TransportError, path: str) -> str:
    """The URL a request without an answer went to (``path`` if httpx does not say)."""
    try:
        return str(error.request.url)
    except RuntimeError:
        return path


@dataclass(frozen=True, slots=True)
class Sleep:
    seconds: float


Plan = Generator["Call[Any] | Sleep", Any, T]


def request(call: Call[T], retry: Retry | None) -> Plan[T]:
    """Send ``call`` and read its answer; retry as ``retry`` says, until its deadline."""
    attempts = Attempts(retry)
    while True:
        reply: Reply = yield call
        try:
            return call.result(reply)
        except ClientError as error:
            wait = attempts.delay(error)
            if wait is None:
                raise
        yield Sleep(wait)


def reader(model: type[BaseModel]) -> Callable[[Any], Any]:
    return lambda body: typed(model, body)


def job_path(job_id: str) -> str:
    return f"task/{quote(job_id, safe='')}"


def new_key() -> str:
    """An Idempotency-Key for one logical submission: every retry of it sends this one."""
    return uuid.uuid4().hex


def task_body(
    user_id: str,
    task: str | None = None,
    payload: Mapping[str, Any] | None = None,
    *,
    priority: int | None = None,
    delay: float | None = None,
    run_at: datetime | str | None = None,
) -> dict[str, Any]:
    """``POST /task``'s body: only the fields given (the server fills in the rest)."""
    body: dict[str, Any] = {"user_id": user_id}
    if task is not None:
        body["task"] = task
    if payload is not None:
        body["payload"] = dict(payload)
    if priority is not None:
        body["priority"] = priority
    if delay is not None:
        body["delay"] = delay
    if run_at is not None:
        body["run_at"] = run_at.isoformat() if isinstance(run_at, datetime) else run_at
    return body


def submit(body: dict[str, Any], idempotency_key: str | None) -> Call[Queued]:
    key = idempotency_key or new_key()
    return Call(
        "POST",
        "task",
        {200: reader(Queued)},
        json=body,
        headers={"Idempotency-Key": key},
        idempotency_key=key,
    )


def submit_many(items: Iterable[Mapping[str, Any] | BaseModel]) -> Call[list[BatchItem]]:
    """``POST /tasks``: each item a ``POST /task`` body (a mapping, or a model such as
    :class:`~taskhub.web.submission.TaskRequest`), given its own Idempotency-Key."""
    tasks = []
    for item in items:
        fields = item.model_dump(exclude_none=True) if isinstance(item, BaseModel) else dict(item)
        fields.setdefault("idempotency_key", new_key())
        tasks.append(fields)
    return Call(
        "POST",
        "tasks",
        {200: batch_results, 404: no_endpoint("POST /tasks"), 405: no_endpoint("POST /tasks")},
        json={"tasks": tasks},
    )


def batch_results(body: Any) -> list[BatchItem]:
    results = body.get("results") if isinstance(body, dict) else None
    if not isinstance(results, list):
        return [typed(Queued, body)]  # raises UnexpectedResponse: no results list
    return [batch_item(item) for item in results]


def batch_item(item: Any) -> BatchItem:
    status = item.get("status") if isinstance(item, dict) else None
    if status == "rate_limited":
        return rate_limited(item, {"status": 429, "code": "rate_limited", "body": item})
    if status == "invalid":
        return invalid(item, {"status": 422, "code": "invalid_request", "body": item})
    return typed(Queued, item)


def no_endpoint(endpoint: str) -> Callable[[Any], Any]:
    def refuse(body: Any) -> Any:
        raise NotSupported(f"the server has no {endpoint} (an older taskhub?)", body=body)

    return refuse


def status(job_id: str, wait: float | None = None) -> Call[Job]:
    params = {"wait": f"{wait:.3f}"} if wait is not None else {}
    return Call(
        "GET",
        job_path(job_id),
        {200: reader(Job)},
        params=params,
        extra_timeout=wait or 0.0,
    )


def cancel(job_id: str) -> Call[Job]:
    read = reader(Job)
    return Call("DELETE", job_path(job_id), {200: read, 202: read})


@dataclass(slots=True)
class ServerWaits:
    """Whether the server holds ``GET /task/{id}?wait=N``: None until a long poll tells."""

    known: bool | None = None


def wait(
    job_id: str,
    timeout: float,
    retry: Retry | None,
    server: ServerWaits,
    clock: Callable[[], float] = time.monotonic,
) -> Plan[Job]:
    """The job once settled (complete, failed, aborted), or its state after ``timeout`` s.

    Long polls of up to MAX_WAIT s while the server holds them; where it does not (a
    422 naming ``wait``, or an unsettled job back at once), polls with backoff instead.
    """
    deadline = clock() + timeout
    poll = POLL_FIRST
    while True:
        remaining = deadline - clock()
        hold = min(MAX_WAIT, remaining) if server.known is not False and remaining > 0 else None
        asked = clock()
        try:
            job = yield from request(status(job_id, hold), retry)
        except Invalid as error:
            if hold is None or not any(p.field == "wait" for p in error.problems):
                raise
            server.known = False
            continue
        if job.status.finished or clock() >= deadline:
            return job
        if hold is not None and hold >= IGNORED_WAIT:
            server.known = clock() - asked >= hold / 2
        if hold is None or server.known is not True:  # the server did not hold it: poll
            yield Sleep(min(poll, max(0.0, deadline - clock())))
            poll = min(POLL_MAX, poll * 2)
