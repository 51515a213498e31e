"""Run one job on a worker: the task's handler, then every sink.

Sinks see a completion before the queue marks the job complete, so a crash
between the two re-runs the job rather than losing its completion (at least
once). Queue plugins call :meth:`TaskRunner.run`; nothing here knows the queue.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from taskhub.components import Sink
from taskhub.jobs import Completion, Failure, Task, TaskSpec
from taskhub.limits.execution import ExecutionGate

if TYPE_CHECKING:
    from taskhub.monitoring.otel import Tracer

logger = logging.getLogger(__name__)


class TaskRunner:
    def __init__(
        self, sinks: Sequence[Sink], gate: ExecutionGate | None = None, tracer: Tracer | None = None
    ) -> None:
        self.sinks = list(sinks)
        self.gate = gate
        self.tracer = tracer  # None: tracing is off

    @property
    def limited(self) -> bool:
        return self.gate is not None

    async def wait_ms(self, spec: TaskSpec, *, job_id: str, user_id: str) -> int:
        """How long a job must wait for its execution limits; 0 to run it now.

        Queue plugins call this before starting an attempt and, when it is not 0,
        reschedule the job for then without using an attempt.
        """
        if self.gate is None:
            return 0
        return await self.gate.wait_ms(spec.name, user_id, job_id, spec.cost)

    async def run(
        self,
        spec: TaskSpec,
        *,
        job_id: str,
        user_id: str,
        payload: Any,
        attempt: int,
        enqueued_ms: int,
    ) -> Any:
        model = spec.handler.Payload
        if model is not None:
            payload = model.model_validate(payload or {})
        task = _task(
            spec.name,
            job_id=job_id,
            user_id=user_id,
            payload=payload,
            attempt=attempt,
            enqueued_ms=enqueued_ms,
        )
        if self.tracer is None:
            result = await spec.handler.run(task)
        else:
            with self.tracer.handler(task):
                result = await spec.handler.run(task)
        me = asyncio.current_task()
        if me is not None and me.cancelling():
            # It swallowed its cancellation (an abort): a result too late to count.
            raise asyncio.CancelledError
        if isinstance(result, BaseModel):
            result = result.model_dump(mode="json")
        await self.emit(Completion(task=task, result=result, completed_at=datetime.now(UTC)))
        return result

    async def emit(self, completion: Completion) -> None:
        if self.tracer is not None:
            await asyncio.gather(
                *(
                    self._traced(sink, "emit", completion.task, sink.emit(completion))
                    for sink in self.sinks
                )
            )
        elif len(self.sinks) == 1:
            await self.sinks[0].emit(completion)
        elif self.sinks:
            await asyncio.gather(*(sink.emit(completion) for sink in self.sinks))

    async def _traced(self, sink: Sink, call: str, task: Task, work: Awaitable[None]) -> None:
        """``work``, one sink's ``call`` (emit or failed) of ``task``, in that sink's span."""
        assert self.tracer is not None
        with self.tracer.sink(sink.name, call, task):
            await work

    async def failed(
        self,
        name: str,
        *,
        job_id: str,
        user_id: str,
        payload: Any,
        attempt: int,
        enqueued_ms: int,
        error: str,
    ) -> None:
        """Hand a final failure to every sink. The job is already a dead letter, so a
        sink that raises is logged and cannot change its outcome or stop the worker."""
        task = _task(
            name,
            job_id=job_id,
            user_id=user_id,
            payload=payload,
            attempt=attempt,
            enqueued_ms=enqueued_ms,
        )
        failure = Failure(task=task, error=error, failed_at=datetime.now(UTC))
        calls = (
            (sink.failed(failure) for sink in self.sinks)
            if self.tracer is None
            else (self._traced(sink, "failed", task, sink.failed(failure)) for sink in self.sinks)
        )
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        for sink, outcome in zip(self.sinks, outcomes, strict=True):
            if isinstance(outcome, Exception):
                logger.error(
                    "sink %s could not record the failure of job %s: %r", sink.name, job_id, outcome
                )


def _task(
    name: str, *, job_id: str, user_id: str, payload: Any, attempt: int, enqueued_ms: int
) -> Task:
    return Task(
        name=name,
        job_id=job_id,
        user_id=user_id,
        payload=payload,
        attempt=attempt,
        enqueued_at=datetime.fromtimestamp(enqueued_ms / 1000, UTC),
    )
