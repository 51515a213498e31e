"""The asyncio client: :class:`AsyncClient`, the same methods as :class:`~taskhub.client.Client`."""

from __future__ import annotations

import asyncio
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


class AsyncClient(ClientBase):
    """taskhub's HTTP API from asyncio code; use it as an async context manager, or close it.

    The settings are :class:`~taskhub.client.base.ClientBase`'s; ``transport`` is
    httpx's (``httpx.ASGITransport`` to call an app in this process, say).
    """

    def __init__(
        self,
        base_url: str | httpx.URL,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        **settings: Unpack[Settings],
    ) -> None:
        super().__init__(base_url, **settings)
        self.http = httpx.AsyncClient(
            base_url=self.base_url, headers=self.headers, timeout=self.timeout, transport=transport
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def submit(
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
        return await self._run(self._submit(user_id, task, payload, idempotency_key, **options))

    async def submit_many(self, items: Iterable[Mapping[str, Any] | BaseModel]) -> list[BatchItem]:
        """``POST /tasks``: one result per item, in order: a :class:`Queued`, or the
        :class:`RateLimited` or :class:`Invalid` that refused it (returned, not raised)."""
        return await self._run(self._submit_many(items))

    async def status(self, job_id: str) -> Job:
        """``GET /task/{id}``: the job's state now."""
        return await self._run(self._status(job_id))

    async def wait(self, job_id: str, timeout: float) -> Job:
        """The job once settled (complete, failed or aborted), or its state after
        ``timeout`` seconds: look at ``job.status``."""
        return await self._run(self._wait(job_id, timeout))

    async def cancel(self, job_id: str) -> Job:
        """``DELETE /task/{id}``: abort the job; its state after (``aborted``, or
        ``aborting`` while its worker stops it). Raises Conflict if it had finished."""
        return await self._run(self._cancel(job_id))

    async def _run(self, plan: Plan[T]) -> T:
        reply: Reply | None = None
        try:
            while True:
                step = plan.send(reply)
                if isinstance(step, Sleep):
                    await asyncio.sleep(step.seconds)
                    reply = None
                    continue
                try:
                    reply = await self.http.request(**self._options(step))
                except httpx.TransportError as exc:
                    reply = exc
        except StopIteration as stop:
            result: T = stop.value
            return result
