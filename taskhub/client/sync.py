"""The blocking client: :class:`Client`."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel
from typing_extensions import Unpack

from taskhub.client.base import ClientBase, Settings, SubmitOptions
from taskhub.client.plans import BatchItem, Plan, Reply, Sleep
from taskhub.web.models import Job, Queued

T = TypeVar("T")


class Client(ClientBase):
    """taskhub's HTTP API from blocking code; use it as a context manager, or close it.

    The settings are :class:`~taskhub.client.base.ClientBase`'s; ``transport`` is
    httpx's (``httpx.ASGITransport`` to call an app in this process, say).
    """

    def __init__(
        self,
        base_url: str | httpx.URL,
        *,
        transport: httpx.BaseTransport | None = None,
        **settings: Unpack[Settings],
    ) -> None:
        super().__init__(base_url, **settings)
        self.http = httpx.Client(
            base_url=self.base_url, headers=self.headers, timeout=self.timeout, transport=transport
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def submit(
        self,
        user_id: str,
        task: str | None = None,
        payload: Mapping[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
        **options: Unpack[SubmitOptions],
    ) -> Queued:
        """``POST /task``: queue one job. Its Idempotency-Key is ``idempotency_key``, or
        a new one: a retry after a lost answer returns the same job, never a second one."""
        return self._run(self._submit(user_id, task, payload, idempotency_key, **options))

    def submit_many(self, items: Iterable[Mapping[str, Any] | BaseModel]) -> list[BatchItem]:
        """``POST /tasks``: one result per item, in order: a :class:`Queued`, or the
        :class:`RateLimited` or :class:`Invalid` that refused it (returned, not raised)."""
        return self._run(self._submit_many(items))

    def status(self, job_id: str) -> Job:
        """``GET /task/{id}``: the job's state now."""
        return self._run(self._status(job_id))

    def wait(self, job_id: str, timeout: float) -> Job:
        """The job once settled (complete, failed or aborted), or its state after
        ``timeout`` seconds: look at ``job.status``."""
        return self._run(self._wait(job_id, timeout))

    def cancel(self, job_id: str) -> Job:
        """``DELETE /task/{id}``: abort the job; its state after (``aborted``, or
        ``aborting`` while its worker stops it). Raises Conflict if it had finished."""
        return self._run(self._cancel(job_id))

    def _run(self, plan: Plan[T]) -> T:
        reply: Reply | None = None
        try:
            while True:
                step = plan.send(reply)
                if isinstance(step, Sleep):
                    time.sleep(step.seconds)
                    reply = None
                    continue
                try:
                    reply = self.http.request(**self._options(step))
                except httpx.TransportError as exc:
                    reply = exc
        except StopIteration as stop:
            result: T = stop.value
            return result
