"""Run one job on a worker: the task's handler, then every sink.

Sinks see a completion before the queue marks the job complete, so a crash
between the two re-runs the job rather than losing its completion (at least
once). Queue plugins call :meth:`TaskRunner.run`; nothing here knows the queue.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel

from taskhub.components import Sink
from taskhub.jobs import Completion, Task, TaskSpec
from taskhub.limits.execution import ExecutionGate


class TaskRunner:
    def __init__(self, sinks: Sequence[Sink], gate: ExecutionGate | None = None) -> None:
        self.sinks = list(sinks)
        self.gate = gate

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
        task = Task(
            name=spec.name,
            job_id=job_id,
            user_id=user_id,
            payload=payload,
            attempt=attempt,
            enqueued_at=datetime.fromtimestamp(enqueued_ms / 1000, UTC),
        )
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
        if len(self.sinks) == 1:
            await self.sinks[0].emit(completion)
        elif self.sinks:
            await asyncio.gather(*(sink.emit(completion) for sink in self.sinks))
