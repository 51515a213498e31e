"""Waiting for a job to settle (``GET /task/{id}?wait=N``) at the queue: on the real Redis,
single server and cluster, with shards=3, in-process.

A waiter answers as soon as its job completes, fails for good or is aborted; after N
seconds it answers with the job as it is. Cancelling a waiter (the client hung up)
frees it, and the shard's reader stops once no waiter is left. No wake-up is lost
between a waiter's read and the step that settles its job.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from taskhub import Task, TaskHandler
from taskhub.builtin.saq.queue import SaqQueue
from taskhub.components import TaskSpec
from taskhub.config.models import RedisSettings
from taskhub.errors import BackendUnavailable
from taskhub.jobs import AbortOutcome, JobStatus
from taskhub.limits.admission import Admission, Outcome
from taskhub.limits.policy import Rule
from taskhub.store.clients import connect
from tests.support.backends import settings_on
from tests.support.namespaces import Namespace
from tests.support.redis_servers import PrivateRedis
from tests.test_shards import bucket, ctx, eventually, sharded, working

# Generous: the machine is loaded. A waiter that should wake must do so far sooner.
LONG = 25.0
SOON = 15.0


class Gate(TaskHandler):
    """Runs until the test opens the gate; fails for users named ``bad-*``."""

    name = "gated"

    def __init__(self) -> None:
        super().__init__(TaskHandler.Config())
        self.gate = asyncio.Event()

    async def run(self, task: Task) -> str:
        await self.gate.wait()
        if task.user_id.startswith("bad-"):
            raise ValueError("boom")
        return f"done {task.user_id}"


@pytest.fixture(params=["single", "cluster"])
def settings(request: pytest.FixtureRequest) -> RedisSettings:
    return settings_on(request.param, request)


@pytest.fixture
async def client(settings: RedisSettings) -> AsyncIterator[aioredis.Redis]:
    conn = connect(settings)
    yield conn
    await conn.aclose()


async def opened(
    ns: Namespace, client: aioredis.Redis, settings: RedisSettings, **options: Any
) -> SaqQueue:
    queue = sharded(ns, client, **options)
    context = SimpleNamespace(
        redis=client,
        connect_redis=lambda blocking_timeout: connect(settings, blocking_timeout=blocking_timeout),
    )
    await queue.open(context)  # type: ignore[arg-type]
    return queue


async def submit(client: aioredis.Redis, queue: SaqQueue, spec: TaskSpec, *users: str) -> list[str]:
    gate = Admission(client, [Rule("u", bucket(1000))], queue, "wait-test", shards=queue.layout())
    ids = []
    for user in users:
        decision = await gate.admit(spec, ctx(user), None)
        assert decision.outcome is Outcome.ADMITTED
        ids.append(decision.job_id)
    return ids


async def timed(call: Any) -> tuple[Any, float]:
    started = time.monotonic()
    result = await call
    return result, time.monotonic() - started


async def until_waiting(queue: SaqQueue, count: int) -> None:
    async def waiting() -> bool:
        return queue.waiting() == count

    await eventually(waiting)


async def test_waiters_wake_when_jobs_complete_or_fail(client, ns, settings) -> None:
    handler = Gate()
    spec = TaskSpec(Gate.name, handler, retries=1)
    queue = await opened(ns, client, settings, concurrency=6)
    try:
        users = [f"u{n}" for n in range(3)] + [f"bad-{n}" for n in range(3)]
        jobs = await submit(client, queue, spec, *users)
        async with working(queue, spec, settings):
            waiters = [asyncio.create_task(timed(queue.wait(job, LONG))) for job in jobs]
            await until_waiting(queue, len(jobs))
            await asyncio.sleep(0.5)
            assert not any(w.done() for w in waiters)  # nothing settled yet: they wait
            handler.gate.set()
            answers = await asyncio.gather(*waiters)
        for (info, elapsed), user in zip(answers, users, strict=True):
            assert elapsed < SOON
            if user.startswith("bad-"):
                assert info.status is JobStatus.FAILED and "ValueError: boom" in info.error
            else:
                assert (info.status, info.result) == (JobStatus.COMPLETE, f"done {user}")
        assert queue.waiting() == 0
    finally:
        await queue.close()


async def test_an_abort_wakes_every_waiter_of_the_job(client, ns, settings) -> None:
    spec = TaskSpec(Gate.name, Gate())
    queue = await opened(ns, client, settings)
    try:
        (job, other) = await submit(client, queue, spec, "alice", "bob")
        waiters = [asyncio.create_task(timed(queue.wait(job, LONG))) for _ in range(50)]
        bystander = asyncio.create_task(queue.wait(other, LONG))
        await until_waiting(queue, 51)
        assert (await queue.abort(job)).outcome is AbortOutcome.ABORTED
        for info, elapsed in await asyncio.gather(*waiters):
            assert info.status is JobStatus.ABORTED and elapsed < SOON
        assert not bystander.done() and queue.waiting() == 1
        bystander.cancel()
    finally:
        await queue.close()


async def test_a_wait_times_out_with_the_current_state(client, ns, settings) -> None:
    queue = await opened(ns, client, settings)
    try:
        (job,) = await submit(client, queue, TaskSpec(Gate.name, Gate()), "carol")
        info, elapsed = await timed(queue.wait(job, 1.0))
        assert info.status is JobStatus.QUEUED and info.job_id == job
        assert elapsed >= 0.99
        assert await queue.wait("no-such-job-1", LONG) is None  # at once
        assert await queue.wait("nonsense", LONG) is None
    finally:
        await queue.close()


async def test_unwatched_jobs_settle_without_a_stream_entry(client, ns, settings) -> None:
    """A job nobody waits for pays one EXISTS as it settles; a watched one adds an entry."""
    queue = await opened(ns, client, settings, by="round_robin")
    try:
        spec = TaskSpec(Gate.name, Gate())
        jobs = await submit(client, queue, spec, "henry", "henry", "henry")
        for job in jobs:
            await queue.abort(job)
        streams = [queue._queues()[shard].settled_key for shard in range(3)]
        assert [await client.exists(key) for key in streams] == [0, 0, 0]
        (watched,) = await submit(client, queue, spec, "ida")
        waiter = asyncio.create_task(queue.wait(watched, LONG))
        await until_waiting(queue, 1)
        await queue.abort(watched)
        assert (await waiter).status is JobStatus.ABORTED
        shard = queue.shards.shard_of(watched)
        assert shard is not None
        (entry,) = await client.xrange(streams[shard])
        job_key = f"saq:job:{queue.shards.queue_name(shard)}:{watched}".encode()
        assert entry[1] == {b"job": job_key, b"status": b"aborted"}
    finally:
        await queue.close()


async def test_a_settled_job_answers_at_once(client, ns, settings) -> None:
    queue = await opened(ns, client, settings)
    try:
        (job,) = await submit(client, queue, TaskSpec(Gate.name, Gate()), "dave")
        await queue.abort(job)
        info, elapsed = await timed(queue.wait(job, LONG))
        assert info.status is JobStatus.ABORTED and elapsed < SOON
    finally:
        await queue.close()


async def test_a_cancelled_waiter_is_freed_and_the_reader_stops(client, ns, settings) -> None:
    queue = await opened(ns, client, settings)
    try:
        (job,) = await submit(client, queue, TaskSpec(Gate.name, Gate()), "erin")
        waiter = asyncio.create_task(queue.wait(job, LONG))
        await until_waiting(queue, 1)
        (reader,) = queue._readers.values()
        assert reader.running
        waiter.cancel()
        await until_waiting(queue, 0)

        async def stopped() -> bool:
            return not reader.running

        await eventually(stopped)
        # A later waiter starts it again and still wakes.
        again = asyncio.create_task(timed(queue.wait(job, LONG)))
        await until_waiting(queue, 1)
        await queue.abort(job)
        info, elapsed = await again
        assert info.status is JobStatus.ABORTED and elapsed < SOON
    finally:
        await queue.close()


async def test_no_wake_up_is_lost_when_jobs_settle_as_waiters_start(client, ns, settings) -> None:
    """Aborts race the waiters' registration: each waiter must wake (not time out)."""
    queue = await opened(ns, client, settings)
    try:
        users = [f"racer-{n}" for n in range(60)]
        jobs = await submit(client, queue, TaskSpec(Gate.name, Gate()), *users)

        async def abort_soon(job: str, n: int) -> None:
            await asyncio.sleep((n % 6) * 0.002)
            await queue.abort(job)

        started = time.monotonic()
        waits = [queue.wait(job, LONG) for job in jobs]
        aborts = [abort_soon(job, n) for n, job in enumerate(jobs)]
        answers = await asyncio.gather(*waits, *aborts)
        assert all(info.status is JobStatus.ABORTED for info in answers[: len(jobs)])
        assert time.monotonic() - started < SOON
    finally:
        await queue.close()


async def test_a_waiter_wakes_across_its_readers_reconnect(client, ns, settings) -> None:
    """The reader's connection drops mid-XREAD; the job settles before it reconnects:
    the reader reads on from where it was, so the waiter still wakes."""
    queue = await opened(ns, client, settings)
    try:
        (job,) = await submit(client, queue, TaskSpec(Gate.name, Gate()), "jack")
        waiter = asyncio.create_task(timed(queue.wait(job, LONG)))
        await until_waiting(queue, 1)
        (reader,) = queue._readers.values()
        await asyncio.sleep(0.3)  # in its XREAD
        connection = reader._client
        if isinstance(connection, RedisCluster):
            for node in connection.get_nodes():
                await node.disconnect()
        else:
            await connection.connection_pool.disconnect()
        await queue.abort(job)
        info, elapsed = await waiter
        assert info.status is JobStatus.ABORTED and elapsed < SOON
        assert reader.running or queue.waiting() == 0
    finally:
        await queue.close()


async def test_a_job_deleted_as_it_settles_is_answered_from_the_stream(
    client, ns, settings
) -> None:
    handler = Gate()
    spec = TaskSpec(Gate.name, handler)
    queue = await opened(ns, client, settings, ttl=-1)
    try:
        (job,) = await submit(client, queue, spec, "frank")
        async with working(queue, spec, settings):
            waiter = asyncio.create_task(queue.wait(job, LONG))
            await until_waiting(queue, 1)
            handler.gate.set()
            info = await waiter
        assert (info.status, info.result) == (JobStatus.COMPLETE, "done frank")
        assert await queue.status(job) is None  # it is gone indeed
    finally:
        await queue.close()


async def test_a_waiter_across_an_outage_answers_within_its_wait(
    aof_redis: PrivateRedis, ns: Namespace
) -> None:
    settings = RedisSettings(url=aof_redis.url)
    client = connect(settings)
    queue = await opened(ns, client, settings)
    try:
        (job,) = await submit(client, queue, TaskSpec(Gate.name, Gate()), "gina")
        waiter = asyncio.create_task(timed(queue.wait(job, 3.0)))
        await until_waiting(queue, 1)
        aof_redis.stop()
        with pytest.raises(BackendUnavailable):  # the API's 503
            await asyncio.wait_for(waiter, SOON)
        with pytest.raises(BackendUnavailable):  # a new waiter too, at once
            await asyncio.wait_for(queue.wait(job, 3.0), SOON)
        assert queue.waiting() == 0
        aof_redis.start()

        async def back() -> bool:
            try:
                return await queue.status(job) is not None
            except BackendUnavailable:
                return False

        await eventually(back)
        again = asyncio.create_task(timed(queue.wait(job, LONG)))
        await until_waiting(queue, 1)
        await queue.abort(job)
        info, elapsed = await again
        assert info.status is JobStatus.ABORTED and elapsed < SOON
    finally:
        await queue.close()
        await client.aclose()
