"""How a worker ends one attempt: timeouts, handlers that ignore cancellation, aborts
and the hand-back at shutdown, in process on the real Redis (quicker and more exact
than through ``taskhub worker``)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from saq.job import Job, Status

from taskhub import Task, TaskHandler, TaskSpec
from taskhub.builtin.saq import jobs as saq_jobs
from taskhub.builtin.saq import worker as saq_worker
from taskhub.builtin.saq.redis_queue import HardenedRedisQueue
from taskhub.builtin.saq.worker import HubWorker, outcome
from taskhub.hub.runner import TaskRunner
from taskhub.jobs import AbortOutcome, AbortResult, Completion
from tests.support.jobs import store_queued

HEARTBEAT = 5.0


class Handler(TaskHandler):
    """Runs ``behaviour`` (by the job's payload) and notes that it started."""

    name = "test"

    def __init__(self) -> None:
        super().__init__(TaskHandler.Config())
        self.started = asyncio.Event()
        self.go = asyncio.Event()  # for "fail-on-go" and "finish-on-go"
        self.runs = 0

    async def run(self, task: Task) -> Any:
        self.runs += 1
        self.started.set()
        behaviour = task.payload
        if behaviour == "hang":
            await asyncio.sleep(3600)
        elif behaviour == "stubborn":  # ignores the first cancellation, for two seconds
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(3600)
            await asyncio.sleep(2)
        elif behaviour == "deaf":  # ignores the abort; only the timeout's cancellation ends it
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(3600)
            await asyncio.sleep(3600)
        elif behaviour == "swallow":  # ignores the abort and returns as if nothing happened
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(3600)
        elif behaviour == "fail-on-go":
            await self.go.wait()
            raise ConnectionError("upstream down")
        elif behaviour == "finish-on-go":
            await self.go.wait()
        elif behaviour == "own-timeout":
            raise TimeoutError("the handler's own")
        return "done"


class Sink:
    """Keeps every completion the runner hands it."""

    def __init__(self) -> None:
        self.completions: list[Completion] = []

    async def emit(self, completion: Completion) -> None:
        self.completions.append(completion)


class Counters:
    """The worker's job outcomes, counted as the metrics plugin counts them."""

    def __init__(self) -> None:
        self.outcomes: Counter[str] = Counter()

    def count(self, task: str, outcome: str) -> None:
        self.outcomes[outcome] += 1

    def ran(self, task: str, seconds: float) -> None:
        pass


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
    queue: HardenedRedisQueue,
    handler: Handler,
    grace: float = 10,
    *,
    sink: Sink | None = None,
    counters: Counters | None = None,
    abort_poll: float = 1,
) -> AsyncIterator[HubWorker]:
    """A worker running on ``queue`` for as long as the block lasts; it looks for abort
    requests every ``abort_poll`` seconds."""
    hub_worker = HubWorker(
        queue,
        beat_interval=HEARTBEAT / 3,
        runner=TaskRunner([sink] if sink is not None else []),
        specs={"test": TaskSpec(name="test", handler=handler)},
        metrics=counters,
        timers={"abort": abort_poll},  # type: ignore[typeddict-item]
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


async def delete(queue: HardenedRedisQueue, job_id: str) -> AbortResult:
    """``DELETE /task/{id}``, as the HTTP API calls it."""
    return await saq_jobs.abort(queue, job_id.rpartition(":")[2])


async def test_a_handler_that_ignores_an_abort_ends_aborted_at_its_timeout_never_retried(
    queue: HardenedRedisQueue, quick_cancel: float
) -> None:
    """Issue 17: it used to end as a timeout failure, and run again."""
    job_id = await enqueue(queue, "deaf", retries=3)
    handler, sink, counters = Handler(), Sink(), Counters()
    async with working(queue, handler, sink=sink, counters=counters) as hub_worker:
        await asyncio.wait_for(handler.started.wait(), 5)
        started = time.monotonic()
        assert (await delete(queue, job_id)).outcome is AbortOutcome.ABORTING
        await hub_worker.abort(0)
        job = await settled(queue, job_id, timeout=5)
        held = time.monotonic() - started
        assert job.status == Status.ABORTED and job.error == "aborted by request"
        assert job.attempts == 1 and job.result is None
        assert held < 1 + quick_cancel + 1  # bounded by its timeout (1 s), not forever
        await asyncio.sleep(1.5)  # a retry would have been due by now (retry_delay 0)
        assert handler.runs == 1
    assert queue.deserialize(await queue.redis.get(job_id)).status == Status.ABORTED  # type: ignore[union-attr]
    assert await queue.redis.zscore(queue._incomplete, job_id) is None
    assert counters.outcomes == Counter(aborted=1)
    assert sink.completions == []


async def test_a_handler_that_swallows_the_abort_and_returns_still_ends_aborted(
    queue: HardenedRedisQueue,
) -> None:
    job_id = await enqueue(queue, "swallow", retries=3)
    handler, sink, counters = Handler(), Sink(), Counters()
    async with working(queue, handler, sink=sink, counters=counters) as hub_worker:
        await asyncio.wait_for(handler.started.wait(), 5)
        await delete(queue, job_id)
        await hub_worker.abort(0)
        job = await settled(queue, job_id, timeout=3)
        assert job.status == Status.ABORTED and job.result is None and job.attempts == 1
    assert counters.outcomes == Counter(aborted=1)
    assert sink.completions == []  # its result came after the cancellation: never emitted


@pytest.mark.parametrize("behaviour", ["fail-on-go", "finish-on-go"])
async def test_an_abort_the_worker_has_not_seen_yet_wins_over_the_attempts_outcome(
    queue: HardenedRedisQueue, behaviour: str
) -> None:
    """The abort reached Redis (DELETE answered 202) before the outcome: the abort wins,
    decided in Redis, even though the worker never cancelled the handler."""
    job_id = await enqueue(queue, behaviour, retries=3)
    handler, counters = Handler(), Counters()
    async with working(queue, handler, counters=counters, abort_poll=3600) as hub_worker:
        await asyncio.wait_for(handler.started.wait(), 5)
        assert (await delete(queue, job_id)).outcome is AbortOutcome.ABORTING
        handler.go.set()
        job = await settled(queue, job_id, timeout=3)
        assert job.status == Status.ABORTED and job.error == "aborted by request"
        assert job.attempts == 1 and job.result is None and job.scheduled == 0
        assert job.worker_id == hub_worker.id and 0 < job.started <= job.completed
        await asyncio.sleep(0.5)
        assert handler.runs == 1
    assert counters.outcomes == Counter(aborted=1)
    assert await queue.redis.zscore(queue._incomplete, job_id) is None


async def test_an_outcome_recorded_before_the_abort_stands_and_the_abort_is_a_conflict(
    queue: HardenedRedisQueue,
) -> None:
    job_id = await enqueue(queue, "finish-on-go")
    handler = Handler()
    async with working(queue, handler, abort_poll=3600):
        await asyncio.wait_for(handler.started.wait(), 5)
        handler.go.set()
        job = await settled(queue, job_id, timeout=3)
        assert job.status == Status.COMPLETE and job.result == "done"
    result = await delete(queue, job_id)
    assert result.outcome is AbortOutcome.FINISHED and result.job is not None
    assert result.job.status == "complete"


async def test_an_abort_during_the_retry_backoff_stops_the_scheduled_retry(
    queue: HardenedRedisQueue,
) -> None:
    job_id = await store_queued(
        queue,
        function="test",
        kwargs={"user_id": "u", "payload": "fail-on-go"},
        timeout=5,
        retries=3,
        retry_delay=1.0,
    )
    handler, counters = Handler(), Counters()
    handler.go.set()
    async with working(queue, handler, counters=counters):
        deadline = time.monotonic() + 5
        while (await queue.redis.zscore(queue._incomplete, job_id) or 0) <= 1:
            assert time.monotonic() < deadline, "the failed attempt was never scheduled again"
            await asyncio.sleep(0.02)
        result = await delete(queue, job_id)
        assert result.outcome is AbortOutcome.ABORTED  # waiting for its retry: aborted at once
        await asyncio.sleep(2)  # past the retry's due time (at most 1 s after the failure)
        assert handler.runs == 1
    job = queue.deserialize(await queue.redis.get(job_id))
    assert job is not None and job.status == Status.ABORTED and job.attempts == 1
    assert await queue.redis.zscore(queue._incomplete, job_id) is None
    assert await queue.redis.lrange(queue._queued, 0, -1) == []
    assert counters.outcomes == Counter(failed=1, retried=1)


async def test_an_abort_between_take_and_claim_keeps_the_job_from_running(
    queue: HardenedRedisQueue,
) -> None:
    job_id = await enqueue(queue, "hang")
    taken = await queue.take(0, block=False)
    assert taken is not None
    job, raw = taken
    assert (await delete(queue, job_id)).outcome is AbortOutcome.ABORTED
    assert not await queue.claim(job, raw, "worker-1")
    stored = queue.deserialize(await queue.redis.get(job_id))
    assert stored is not None and stored.status == Status.ABORTED and stored.attempts == 0
    assert await queue.redis.lrange(queue._active, 0, -1) == []
    assert await queue.redis.zscore(queue._incomplete, job_id) is None


async def test_shutdown_ends_a_job_being_aborted_as_aborted_not_handed_back(
    queue: HardenedRedisQueue, quick_cancel: float
) -> None:
    job_id = await enqueue(queue, "hang", retries=3)
    handler, counters = Handler(), Counters()
    async with working(queue, handler, grace=0.2, counters=counters, abort_poll=3600):
        await asyncio.wait_for(handler.started.wait(), 5)
        await delete(queue, job_id)  # not seen by the worker before it stops
    job = queue.deserialize(await queue.redis.get(job_id))
    assert job is not None and job.status == Status.ABORTED and job.attempts == 1
    assert job.worker_id is not None and job.started > 0
    assert await queue.redis.lrange(queue._queued, 0, -1) == []
    assert counters.outcomes == Counter(aborted=1)
