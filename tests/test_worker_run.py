"""How a worker ends one attempt: timeouts, handlers that ignore cancellation, aborts
and the hand-back at shutdown, in process on the real Redis (quicker and more exact
than through ``taskhub worker``)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from saq.job import Job, Status

from taskhub import Task, TaskHandler, TaskSpec
from taskhub.builtin.saq import worker as saq_worker
from taskhub.builtin.saq.redis_queue import HardenedRedisQueue
from taskhub.builtin.saq.worker import HubWorker, outcome
from taskhub.hub.runner import TaskRunner
from tests.support.jobs import store_queued

HEARTBEAT = 5.0


class Handler(TaskHandler):
    """Runs ``behaviour`` (by the job's payload) and notes that it started."""

    name = "test"

    def __init__(self) -> None:
        super().__init__(TaskHandler.Config())
        self.started = asyncio.Event()

    async def run(self, task: Task) -> Any:
        self.started.set()
        behaviour = task.payload
        if behaviour == "hang":
            await asyncio.sleep(3600)
        elif behaviour == "stubborn":  # ignores the first cancellation, for two seconds
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(3600)
            await asyncio.sleep(2)
        elif behaviour == "own-timeout":
            raise TimeoutError("the handler's own")
        return "done"


async def enqueue(queue: HardenedRedisQueue, payload: str, retries: int = 1) -> str:
    return await store_queued(
        queue,
        function="test",
        kwargs={"user_id": "u", "payload": payload},
        timeout=1,
        retries=retries,
    )


@contextlib.asynccontextmanager
async def working(
    queue: HardenedRedisQueue, handler: Handler, grace: float = 10
) -> AsyncIterator[HubWorker]:
    """A worker running on ``queue`` for as long as the block lasts."""
    hub_worker = HubWorker(
        queue,
        beat_interval=HEARTBEAT / 3,
        runner=TaskRunner([]),
        specs={"test": TaskSpec(name="test", handler=handler)},
        functions=[],
        concurrency=2,
        dequeue_timeout=0.1,
        shutdown_grace_period_s=grace,  # type: ignore[arg-type]
    )
    running = asyncio.create_task(hub_worker.start())
    try:
        yield hub_worker
    finally:
        await hub_worker.stop()
        await running


async def settled(queue: HardenedRedisQueue, job_id: str, timeout: float = 10) -> Job:
    """The stored job once it left the running states."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = queue.deserialize(await queue.redis.get(job_id))
        if job is not None and job.status not in (Status.ACTIVE, Status.ABORTING, Status.QUEUED):
            return job
        await asyncio.sleep(0.02)
    raise AssertionError(f"job {job_id} did not settle: {job}")


@pytest.fixture
def quick_cancel(monkeypatch: pytest.MonkeyPatch) -> float:
    monkeypatch.setattr(saq_worker, "CANCEL_DEADLINE", 0.3)
    return 0.3


async def test_outcome_is_the_result_or_a_timeout_and_never_cancels_the_handler() -> None:
    async def slow(value: str, delay: float) -> str:
        await asyncio.sleep(delay)
        return value

    assert await outcome(asyncio.create_task(slow("a", 0)), 1) == "a"
    assert await outcome(asyncio.create_task(slow("b", 0.05)), None) == "b"
    task = asyncio.create_task(slow("c", 0.3))
    with pytest.raises(TimeoutError):
        await outcome(task, 0.05)
    assert not task.done()  # the caller decides what to do with it
    waiting = asyncio.create_task(outcome(task, None))
    await asyncio.sleep(0.01)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert await task == "c"  # cancelling the caller left the handler alone


async def test_a_handler_past_its_timeout_is_cancelled_and_the_attempt_fails(
    queue: HardenedRedisQueue,
) -> None:
    job_id = await enqueue(queue, "hang")
    async with working(queue, Handler()):
        started = time.monotonic()
        job = await settled(queue, job_id)
        assert job.status == Status.FAILED and job.attempts == 1
        assert job.error == "TimeoutError: timed out after 1 s"
        assert 1 <= time.monotonic() - started < 3


async def test_a_handler_that_ignores_cancellation_still_times_out_within_the_deadline(
    queue: HardenedRedisQueue, quick_cancel: float
) -> None:
    job_id = await enqueue(queue, "stubborn")
    async with working(queue, Handler()):
        started = time.monotonic()
        job = await settled(queue, job_id)
        assert job.status == Status.FAILED and job.error == "TimeoutError: timed out after 1 s"
        assert time.monotonic() - started < 1 + quick_cancel + 1


async def test_the_handlers_own_timeout_error_is_a_failure_with_its_traceback(
    queue: HardenedRedisQueue,
) -> None:
    job_id = await enqueue(queue, "own-timeout")
    async with working(queue, Handler()):
        job = await settled(queue, job_id)
        assert job.status == Status.FAILED
        assert job.error is not None and "TimeoutError: the handler's own" in job.error
        assert "Traceback" in job.error


async def request_abort(queue: HardenedRedisQueue, job_id: str) -> None:
    """What ``DELETE /task/{id}`` does to a running job."""
    job = queue.deserialize(await queue.redis.get(job_id))
    assert job is not None
    job.status, job.error = Status.ABORTING, "stop it"
    await queue.redis.set(job_id, queue.serialize(job))


async def test_an_abort_cancels_the_handler_and_finishes_the_job_as_aborted(
    queue: HardenedRedisQueue,
) -> None:
    job_id = await enqueue(queue, "hang", retries=3)
    handler = Handler()
    async with working(queue, handler) as hub_worker:
        await asyncio.wait_for(handler.started.wait(), 5)
        await request_abort(queue, job_id)
        started = time.monotonic()
        await hub_worker.abort(0)
        job = await settled(queue, job_id, timeout=3)
        assert job.status == Status.ABORTED and job.error == "stop it" and job.attempts == 1
        assert time.monotonic() - started < 0.5


async def test_shutdown_hands_back_a_stubborn_job_with_its_attempt_within_the_deadline(
    queue: HardenedRedisQueue, quick_cancel: float
) -> None:
    job_id = await enqueue(queue, "stubborn", retries=3)
    handler = Handler()
    async with working(queue, handler, grace=0.2):
        await asyncio.wait_for(handler.started.wait(), 5)
        started = time.monotonic()
    assert time.monotonic() - started < 0.2 + quick_cancel + 1
    job = queue.deserialize(await queue.redis.get(job_id))
    assert job is not None and job.status == Status.QUEUED and job.attempts == 0
    assert await queue.redis.lrange(queue._queued, 0, -1) == [job_id.encode()]
    assert await queue.redis.lrange(queue._active, 0, -1) == []
