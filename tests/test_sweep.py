"""The sweep never takes a live job (SAQ issue 277) and always takes a dead worker's.

These drive the queue's own operations step by step on the real Redis, so each
interleaving of worker and sweep happens deterministically.
"""

from __future__ import annotations

import asyncio

import orjson
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from saq.job import Job, Status
from saq.queue.redis import RedisQueue

from taskhub.builtin.saq.redis_queue import Fence, HardenedRedisQueue, Move, Moved
from tests.support.jobs import store_queued

HEARTBEAT = 0.5


async def enqueue(queue: HardenedRedisQueue, retries: int = 2) -> str:
    """A job as admission stores it."""
    return await store_queued(
        queue,
        function="log_completion",
        kwargs={"user_id": "u"},
        heartbeat=HEARTBEAT,
        retries=retries,
    )


async def sweep(queue: HardenedRedisQueue) -> list[str]:
    await queue.redis.delete(queue._sweep)  # the lock: sweep now, not once per interval
    return await queue.sweep(lock=60)


async def stored(queue: HardenedRedisQueue, job_id: str) -> Job:
    job = queue.deserialize(await queue.redis.get(job_id))
    assert job is not None
    return job


async def lists(queue: HardenedRedisQueue) -> tuple[list[bytes], list[bytes]]:
    redis = queue.redis
    return await redis.lrange(queue._queued, 0, -1), await redis.lrange(queue._active, 0, -1)


async def test_stock_saq_sweeps_a_just_dequeued_job(queue: HardenedRedisQueue) -> None:
    """Issue 277, shown on SAQ's own sweep: the job a worker has just dequeued, whose
    stored status still says "queued", is aborted and re-queued under the worker."""
    job_id = await enqueue(queue)
    assert await queue.take(1) is not None  # dequeued; the worker has not marked it yet
    await queue.redis.delete(queue._sweep)
    swept = await RedisQueue.sweep(queue, lock=60, abort=0.1)
    assert swept == [job_id]
    assert (await stored(queue, job_id)).status == Status.QUEUED
    queued, active = await lists(queue)
    assert queued == [job_id.encode()] and active == []  # another worker will run it too


async def test_a_just_dequeued_job_is_never_swept(queue: HardenedRedisQueue) -> None:
    job_id = await enqueue(queue)
    taken = await queue.take(1)
    assert taken is not None
    job, raw = taken
    assert await sweep(queue) == []  # first sight: no heartbeat yet, so a grace period
    await asyncio.sleep(HEARTBEAT / 2)
    assert await sweep(queue) == []
    assert await queue.claim(job, raw, "worker-1")  # the worker gets there, a bit late
    assert (await stored(queue, job_id)).status == Status.ACTIVE
    assert await lists(queue) == ([], [job_id.encode()])


async def test_a_live_job_that_beats_is_never_swept(queue: HardenedRedisQueue) -> None:
    job_id = await enqueue(queue)
    job, raw = await queue.take(1)  # type: ignore[misc]
    assert await queue.claim(job, raw, "worker-1")
    for _ in range(12):  # three heartbeat periods, sweeping all the time
        await queue.beat([job_id])
        assert await sweep(queue) == []
        await asyncio.sleep(HEARTBEAT / 4)
    job.status = Status.COMPLETE
    assert await queue.move(job, Move.FINISH, Fence.RUN, queue.run_fence(job))
    assert await lists(queue) == ([], [])


async def test_a_dead_workers_job_is_requeued_after_one_heartbeat(
    queue: HardenedRedisQueue, caplog: pytest.LogCaptureFixture
) -> None:
    job_id = await enqueue(queue)
    job, raw = await queue.take(1)  # type: ignore[misc]
    assert await queue.claim(job, raw, "worker-1")
    fence = queue.run_fence(job)
    assert await sweep(queue) == []  # fresh
    await asyncio.sleep(HEARTBEAT + 0.2)  # the worker died: no beats
    assert await sweep(queue) == [job_id]
    again = await stored(queue, job_id)
    assert again.status == Status.QUEUED and again.attempts == 1 and again.worker_id is None
    assert again.error == "worker lost: no heartbeat for 0.5 s"
    assert await lists(queue) == ([job_id.encode()], [])  # first in line
    assert "attempt 1 of 2 lost: queued again" in caplog.text

    # The "dead" worker was only slow: its outcome is refused, not written over the re-run.
    job.status = Status.COMPLETE
    assert not await queue.move(job, Move.FINISH, Fence.RUN, fence)
    assert (await stored(queue, job_id)).status == Status.QUEUED


async def test_a_job_dequeued_by_a_worker_that_died_is_requeued_without_using_an_attempt(
    queue: HardenedRedisQueue, caplog: pytest.LogCaptureFixture
) -> None:
    job_id = await enqueue(queue)
    assert await queue.take(1) is not None  # ...and the worker died before claiming it
    assert await sweep(queue) == []
    await asyncio.sleep(HEARTBEAT + 0.2)
    assert await sweep(queue) == [job_id]
    again = await stored(queue, job_id)
    assert again.status == Status.QUEUED and again.attempts == 0
    assert await lists(queue) == ([job_id.encode()], [])
    assert "dequeued but never started: queued again, no attempt used" in caplog.text


async def test_a_requeued_job_taken_again_by_a_worker_that_died_is_requeued_again(
    queue: HardenedRedisQueue,
) -> None:
    """The ledger's lost jobs: the sweep re-queued a job (writing its record), a worker
    took it and died before claiming it, and the sweep's move back changes nothing in
    the record. That once counted as a repeat of a move already done, so the job stayed
    in the active list for good while every sweep logged it "queued again"."""
    job_id = await enqueue(queue)
    job, raw = await queue.take(1)  # type: ignore[misc]
    assert await queue.claim(job, raw, "worker-1")
    await sweep(queue)
    await asyncio.sleep(HEARTBEAT + 0.2)  # worker-1 died mid-job
    assert await sweep(queue) == [job_id]
    for _ in range(2):  # taken again, and again its worker dies before the claim
        assert await queue.take(1) is not None
        assert await lists(queue) == ([], [job_id.encode()])
        await asyncio.sleep(HEARTBEAT + 0.2)
        assert await sweep(queue) == [job_id]
        assert await lists(queue) == ([job_id.encode()], [])
    again = await stored(queue, job_id)
    assert again.status == Status.QUEUED and again.attempts == 1


async def test_a_stopping_worker_puts_back_a_job_it_took_whose_record_it_left_as_read(
    queue: HardenedRedisQueue,
) -> None:
    """As the worker does when it took a job while stopping: the move changes only the
    lists, never the record, and must still happen (not be taken for a repeat)."""
    job_id = await enqueue(queue)
    job, raw = await queue.take(1)  # type: ignore[misc]
    assert await queue.claim(job, raw, "worker-1")
    await sweep(queue)
    await asyncio.sleep(HEARTBEAT + 0.2)
    assert await sweep(queue) == [job_id]  # now stored in this queue's own bytes
    job, raw = await queue.take(1)  # type: ignore[misc]
    assert queue.serialize(job) == raw  # the record is left exactly as read
    assert await queue.move(job, Move.FRONT, Fence.STORED, raw) is Moved.DONE
    assert await lists(queue) == ([job_id.encode()], [])
    assert await queue.redis.zscore(queue.beats_key, job_id) is None


async def test_a_dead_workers_last_attempt_becomes_a_dead_letter(
    queue: HardenedRedisQueue, caplog: pytest.LogCaptureFixture
) -> None:
    job_id = await enqueue(queue, retries=1)
    job, raw = await queue.take(1)  # type: ignore[misc]
    assert await queue.claim(job, raw, "worker-1")
    await sweep(queue)
    await asyncio.sleep(HEARTBEAT + 0.2)
    assert await sweep(queue) == [job_id]
    dead = await stored(queue, job_id)
    assert dead.status == Status.FAILED and dead.error.startswith("worker lost")  # type: ignore[union-attr]
    assert await queue.redis.zrange(queue.dead_key, 0, -1) == [job_id.encode()]
    assert await lists(queue) == ([], [])
    assert "attempt 1 of 1 was its last: now a dead letter" in caplog.text


async def test_a_dead_letter_whose_reply_was_lost_reaches_the_sinks_once(
    queue: HardenedRedisQueue,
) -> None:
    """The sweep's dead-letter step runs on Redis but its reply is lost (a connection
    dropped): the sweep asks again, the repeat finds the job as the step left it, and the
    dead letter is reported once. Before, the error skipped the round, and no later sweep
    saw the job again (it is no longer active): the sinks never heard of it."""
    job_id = await enqueue(queue, retries=1)
    job, raw = await queue.take(1)  # type: ignore[misc]
    assert await queue.claim(job, raw, "worker-1")
    await sweep(queue)
    await asyncio.sleep(HEARTBEAT + 0.2)
    reported: list[str] = []

    async def on_dead(dead: Job) -> None:
        reported.append(dead.id)

    queue.on_dead = on_dead
    step, lost = queue._step, []

    async def reply_lost(**kwargs: object) -> object:
        result = await step(**kwargs)  # type: ignore[arg-type]
        if not lost:
            lost.append(result)
            raise RedisConnectionError("Connection closed by server.")
        return result

    queue._step = reply_lost  # type: ignore[method-assign]
    assert await sweep(queue) == [job_id]
    assert lost, "the reply was not lost: the test did not test it"
    assert reported == [job_id]
    assert await queue.redis.zrange(queue.dead_key, 0, -1) == [job_id.encode()]
    assert await sweep(queue) == [] and reported == [job_id]


async def test_a_claim_after_the_sweep_took_the_job_is_refused(
    queue: HardenedRedisQueue,
) -> None:
    job_id = await enqueue(queue)
    job, raw = await queue.take(1)  # type: ignore[misc]
    await sweep(queue)
    await asyncio.sleep(HEARTBEAT + 0.2)  # the worker stalled for longer than a heartbeat
    assert await sweep(queue) == [job_id]
    assert not await queue.claim(job, raw, "worker-1")  # it is someone else's now
    assert await lists(queue) == ([job_id.encode()], [])


async def test_a_stale_queue_entry_of_a_finished_job_never_runs_it_again(
    queue: HardenedRedisQueue,
) -> None:
    """A worker's own moves do not scan the queue for the job (O(queue length) per job),
    so the claim refuses any job that is not waiting, and drops the stale entry."""
    job_id = await enqueue(queue)
    job, raw = await queue.take(1)  # type: ignore[misc]
    assert await queue.claim(job, raw, "worker-1")
    job.status = Status.COMPLETE
    assert await queue.move(job, Move.FINISH, Fence.RUN, queue.run_fence(job))
    await queue.redis.rpush(queue._queued, job_id)  # a stray entry, however it came
    again, raw = await queue.take(1)  # type: ignore[misc]
    assert not await queue.claim(again, raw, "worker-2")
    assert await lists(queue) == ([], [])
    assert (await stored(queue, job_id)).status == Status.COMPLETE


async def test_once_an_abort_is_requested_only_the_abort_ends_the_run(
    queue: HardenedRedisQueue,
) -> None:
    """The abort is decided in Redis, in the same script as the outcome it races: the
    run's outcome (here a retry) is refused, the abort (Fence.STOP) ends the run, and
    either asked again changes nothing."""
    job_id = await enqueue(queue)
    job, raw = await queue.take(1)  # type: ignore[misc]
    assert await queue.claim(job, raw, "worker-1")
    fence = queue.run_fence(job)
    marked = await stored(queue, job_id)
    marked.status, marked.error = Status.ABORTING, "aborted by request"  # as DELETE does
    await queue.redis.set(job_id, queue.serialize(marked))

    job.status, job.started = Status.QUEUED, 0
    assert await queue.move(job, Move.LATER, Fence.RUN, fence, score=1.0) is Moved.ABORTING
    assert (await stored(queue, job_id)).status == Status.ABORTING
    assert await lists(queue) == ([], [job_id.encode()])

    job.status, job.error = Status.ABORTED, "aborted by request"
    for _ in range(2):  # the second: a repeat whose reply was lost
        assert await queue.move(job, Move.FINISH, Fence.STOP, fence) is Moved.DONE
    assert (await stored(queue, job_id)).status == Status.ABORTED
    assert await lists(queue) == ([], [])
    assert await queue.redis.zscore(queue._incomplete, job_id) is None
    assert await queue.schedule() == []
    job.error = "by another worker"
    assert not await queue.move(job, Move.FINISH, Fence.STOP, "worker-2:1")  # not its run


async def test_a_transition_asked_again_after_its_reply_was_lost_changes_nothing(
    queue: HardenedRedisQueue,
) -> None:
    """A worker whose call timed out asks again (the call may have run, its reply lost),
    and the lost call itself may reach Redis late: either repeat finds the job as the
    transition leaves it, reports done and changes nothing. Before, a repeated claim
    took the job for a stale entry and dropped it from the active list (lost for
    good), and a repeated "later" queued a job the schedule had already queued."""
    job_id = await enqueue(queue)
    job, raw = await queue.take(1)  # type: ignore[misc]
    assert await queue.claim(job, raw, "worker-1")
    assert await queue.move(job, Move.CLAIM, Fence.STORED, raw)  # the claim again
    assert await lists(queue) == ([], [job_id.encode()])
    claimed = await stored(queue, job_id)
    assert claimed.status == Status.ACTIVE and claimed.attempts == 1
    job.status, job.started = Status.QUEUED, 0
    fence = queue.run_fence(job)
    assert await queue.move(job, Move.LATER, Fence.RUN, fence, score=1.0)  # due at once
    assert await queue.schedule() == [job_id]
    assert await queue.move(job, Move.LATER, Fence.RUN, fence, score=1.0)  # late, or again
    assert await queue.schedule() == []  # not scheduled a second time
    assert await lists(queue) == ([job_id.encode()], [])


async def test_a_take_gives_the_job_its_first_heartbeat_in_the_same_step(
    queue: HardenedRedisQueue,
) -> None:
    job_id = await enqueue(queue)
    assert await queue.take(1) is not None
    assert await queue.redis.zscore(queue.beats_key, job_id) is not None
    assert await lists(queue) == ([], [job_id.encode()])


async def test_concurrent_moves_share_round_trips_and_keep_their_own_fences(
    queue: HardenedRedisQueue,
) -> None:
    """Takes, claims and settlements asked for at once go out together (in two calls,
    so that Redis runs one half while the worker handles the other), yet each is
    fenced on its own: a move whose fence is lost fails alone, and a move that errors
    (a job that is not JSON) fails alone."""
    ids = [await enqueue(queue) for _ in range(20)]
    calls = 0
    send = queue._send

    async def counted(*args: object) -> None:
        nonlocal calls
        calls += 1
        await send(*args)  # type: ignore[arg-type]

    queue._send = counted  # type: ignore[method-assign]
    taken = await asyncio.gather(*(queue.take(1) for _ in ids))
    assert calls == 2 and all(taken)
    jobs = [job for job, _ in taken]  # type: ignore[misc]
    claimed = await asyncio.gather(
        *(queue.claim(job, raw, "worker-1") for job, raw in taken)  # type: ignore[misc]
    )
    assert calls == 4 and all(claimed)
    fences = [queue.run_fence(job) for job in jobs]
    fences[3] = "worker-2:1"  # not this worker's run
    await queue.redis.set(ids[5], b"not json")  # a corrupt job
    for job in jobs:
        job.status = Status.COMPLETE
    settled = await asyncio.gather(
        *(
            queue.move(job, Move.FINISH, Fence.RUN, fence)
            for job, fence in zip(jobs, fences, strict=True)
        ),
        return_exceptions=True,
    )
    assert calls == 6
    assert settled[3] is Moved.LOST and isinstance(settled[5], ResponseError)
    assert all(ok is Moved.DONE for i, ok in enumerate(settled) if i not in (3, 5))
    assert await lists(queue) == ([], [ids[3].encode(), ids[5].encode()])
    assert (await stored(queue, ids[3])).status == Status.ACTIVE


def test_serialize_writes_the_bytes_saq_writes(queue: HardenedRedisQueue) -> None:
    """The queue's own serializer (twice per job) must store exactly what SAQ's would."""
    jobs = [
        Job("f", kwargs={"user_id": "u"}, queue=queue, key="k"),
        Job(
            "f",
            kwargs={"user_id": "u", "payload": [1, 2.5, {"a": None}]},
            queue=queue,
            key="k",
            timeout=5,
            heartbeat=10,
            retries=3,
            ttl=0,
            retry_delay=1.0,
            retry_backoff=60,
            attempts=2,
            queued=123,
            started=5,
            status=Status.ACTIVE,
            worker_id="w",
            meta={"holds": ["a"]},
        ),
        Job("f", queue=queue, key="k", retry_backoff=0, progress=0, result={"x": 1}, error="e"),
        Job("f", queue=queue, key="k", retry_backoff=True, progress=1.0, meta={}, result=0),
    ]
    for job in jobs:
        assert queue.serialize(job) == orjson.dumps(job.to_dict())
