"""Inspect and steer SAQ jobs for the HTTP API and the CLI, in taskhub's terms.

Every change goes through the queue's fenced transitions: read the job, decide,
then write only if the stored job is still exactly what was read (otherwise
read again), so an abort or a retry can never undo a worker's concurrent write.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import heapq
import itertools
import re
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import orjson
from saq.job import Job, Status
from saq.utils import now

from taskhub.builtin.saq.line import FAIR
from taskhub.builtin.saq.redis_queue import (
    ABORT_REQUESTED,
    SEEN_MS,
    Fence,
    HardenedRedisQueue,
    Move,
)
from taskhub.builtin.saq.settled import MARKER_TTL_MS, SettledReader
from taskhub.jobs import AbortOutcome, AbortResult, JobInfo, JobStatus, QueueSnapshot, WorkerStatus

# Ids taskhub hands out are uuid4 hex; anything outside this never names a job.
JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
# Reads before a change gives up when every attempt lost a race (a job cannot change
# state that often in a row unless something is badly wrong).
CAS_ROUNDS = 10
# The job's ``meta`` entry marking a job submitted with a delay (its ``scheduled`` is its run_at).
DELAYED = "delayed"
# Users the snapshot lists by queued jobs, with fairness user.
TOP_USERS = 5
# States a job leaves no more: what a waiter waits for.
SETTLED = frozenset({Status.COMPLETE, Status.FAILED, Status.ABORTED})


def moment(ms: float) -> datetime | None:
    return datetime.fromtimestamp(ms / 1000, UTC) if ms else None


def job_info(job: Job) -> JobInfo:
    status = JobStatus.QUEUED if job.status == Status.NEW else JobStatus(job.status.value)
    delayed = job.attempts == 0 and bool((job.meta or {}).get(DELAYED))  # never ran yet
    run_at = 0.0
    if status is JobStatus.QUEUED and delayed and job.scheduled * 1000 > now():
        status, run_at = JobStatus.SCHEDULED, job.scheduled * 1000
    waits = status is JobStatus.QUEUED and job.scheduled and not delayed
    retry_at = job.scheduled * 1000 if waits else 0
    return JobInfo(
        job_id=job.key,
        task=job.function,
        user_id=str((job.kwargs or {}).get("user_id", "")),
        status=status,
        attempts=job.attempts,
        max_attempts=job.retries,
        queued_at=moment(job.queued),
        run_at=moment(run_at),
        retry_at=moment(retry_at),
        started_at=moment(job.started),
        completed_at=moment(job.completed),
        result=job.result,
        error=job.error,
    )


async def read(queue: HardenedRedisQueue, job_id: str) -> tuple[Job, bytes] | None:
    if not JOB_ID.fullmatch(job_id):
        return None
    raw = await queue.redis.get(queue.job_id(job_id))
    if raw is None:
        return None
    job = queue.deserialize(raw)
    return (job, raw) if job is not None else None


async def status(queue: HardenedRedisQueue, job_id: str) -> JobInfo | None:
    found = await read(queue, job_id)
    return job_info(found[0]) if found else None


async def wait(
    queue: HardenedRedisQueue, reader: SettledReader, job_id: str, timeout: float
) -> JobInfo | None:
    """The job once it settles, or its state after ``timeout`` seconds; None: no such job.

    Registered with the reader before the marker is set and the job read (one round
    trip): see :mod:`taskhub.builtin.saq.settled` for why no wake-up is lost.
    """
    if not JOB_ID.fullmatch(job_id):
        return None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    key = queue.job_id(job_id)
    woken = reader.register(key.encode())
    try:
        await reader.positioned()
        async with queue.redis.pipeline(transaction=False) as pipe:
            pipe.set(queue.waiting_prefix + job_id, 1, px=MARKER_TTL_MS)
            pipe.get(key)
            _, raw = await pipe.execute()
        job = None if raw is None else queue.deserialize(raw)
        if job is None or job.status in SETTLED:
            return None if job is None else job_info(job)
        settled: bytes | None = None
        with contextlib.suppress(TimeoutError):
            settled = await asyncio.wait_for(woken, max(0.0, deadline - loop.time()))
    finally:
        reader.release(key.encode(), woken)
    raw = await queue.redis.get(key)
    if raw is None:  # gone as it settled (ttl -1): as the step left it
        raw = settled
    job = None if raw is None else queue.deserialize(raw)
    return None if job is None else job_info(job)


async def abort(queue: HardenedRedisQueue, job_id: str) -> AbortResult:
    """A waiting job is aborted at once; a running one is marked, and its worker stops it."""
    for _ in range(CAS_ROUNDS):
        found = await read(queue, job_id)
        if found is None:
            return AbortResult(AbortOutcome.UNKNOWN)
        job, raw = found
        if job.status in (Status.COMPLETE, Status.FAILED, Status.ABORTED):
            return AbortResult(AbortOutcome.FINISHED, job_info(job))
        if job.status == Status.ABORTING:
            return AbortResult(AbortOutcome.ABORTING, job_info(job))
        job.error = ABORT_REQUESTED
        if job.status == Status.ACTIVE:
            job.status, outcome, move = Status.ABORTING, AbortOutcome.ABORTING, Move.MARK
        else:
            job.status, outcome, move = Status.ABORTED, AbortOutcome.ABORTED, Move.FINISH
            job.completed = now()
        if await queue.move(job, move, Fence.STORED, raw):
            return AbortResult(outcome, job_info(job))
    raise RuntimeError(f"job {job_id} kept changing while it was being aborted")


async def retry_dead(queue: HardenedRedisQueue, job_ids: list[str] | None) -> list[str]:
    """Move dead letters back to the queue's tail with fresh attempts."""
    wanted = None if job_ids is None else set(job_ids)
    moved = []
    for job, raw in await queue.dead_entries():
        if wanted is not None and job.key not in wanted:
            continue
        job.status, job.attempts, job.queued = Status.QUEUED, 0, now()
        job.started = job.completed = job.scheduled = 0
        job.result = job.error = job.worker_id = None
        if await queue.move(job, Move.BACK, Fence.DEAD, raw):
            moved.append(job.key)
    return moved


async def snapshot(queue: HardenedRedisQueue, failures: int) -> QueueSnapshot:
    """Depth, live workers (from the stats SAQ workers write) and the newest dead letters.

    "Running" per worker is read from the jobs in the active list, not from the
    worker's own report, which is up to one report interval old.
    """
    async with queue.redis.pipeline(transaction=True) as pipe:
        queue.count_queued(pipe)
        pipe.lrange(queue._active, 0, -1)
        pipe.zcard(queue._incomplete)
        pipe.zcard(queue.dead_key)
        pipe.zrevrange(queue.dead_key, 0, max(failures, 1) - 1)
        pipe.zrangebyscore(queue._stats, now(), "+inf", withscores=True)
        (
            listed,
            head,
            prio,
            lined,
            active_ids,
            incomplete,
            dead,
            dead_ids,
            reports,
        ) = await pipe.execute()
    queued = queue.queued_from(listed, head, prio, lined)
    top = await queue.top_users(TOP_USERS) if queue.fairness == FAIR else []
    taken_at = datetime.now(UTC)
    active_raws = await queue.redis.mget(active_ids) if active_ids else []
    running = Counter(
        str(job.worker_id)
        for job in (queue.deserialize(raw) for raw in active_raws if raw is not None)
        if job is not None and job.worker_id and job.status in (Status.ACTIVE, Status.ABORTING)
    )
    infos = await queue.redis.mget([key for key, _ in reports]) if reports else []
    workers: dict[str, WorkerStatus] = {}
    for (key, _), raw in zip(reports, infos, strict=True):
        if raw is None:
            continue  # expired between the two reads
        worker_id = key.decode().rsplit("worker_info:", 1)[-1]
        workers[worker_id] = worker_status(worker_id, orjson.loads(raw), running[worker_id])
    for worker_id, count in running.items():  # a worker holding jobs but no longer reporting
        workers.setdefault(worker_id, WorkerStatus(worker_id, count))
    letters = await queue.redis.mget(dead_ids[:failures]) if failures > 0 and dead_ids else []
    recent = [queue.deserialize(raw) for raw in letters if raw is not None]
    return QueueSnapshot(
        queue=queue.name,
        taken_at=taken_at,
        queued=queued,
        active=len(active_ids),
        scheduled=max(0, incomplete - queued - len(active_ids)),
        dead=dead,
        workers=sorted(workers.values(), key=lambda w: w.worker_id),
        recent_failures=[job_info(job) for job in recent if job is not None],
        fairness=queue.fairness,
        top_users=top,
    )


def oldest_first(shards: list[list[tuple[Job, bytes]]], limit: int | None) -> list[Job]:
    """Dead letters of every shard (each oldest first) as one list, oldest first."""
    merged = heapq.merge(*shards, key=lambda entry: entry[0].completed)
    return [job for job, _ in itertools.islice(merged, limit)]


def merge_snapshots(name: str, shots: list[QueueSnapshot], failures: int) -> QueueSnapshot:
    """One snapshot of a sharded queue: counts summed, workers and failures merged.

    Workers report in the first shard; the jobs each runs are counted in every shard.
    """
    if len(shots) == 1:
        return dataclasses.replace(shots[0], queue=name)
    workers: dict[str, WorkerStatus] = {}
    for shot in shots:
        for worker in shot.workers:
            known = workers.get(worker.worker_id)
            if known is None:
                workers[worker.worker_id] = worker
            else:
                running = known.running + worker.running
                base = known if known.last_seen is not None else worker
                workers[worker.worker_id] = dataclasses.replace(base, running=running)
    failed = sorted(
        (job for shot in shots for job in shot.recent_failures),
        key=lambda job: job.completed_at or datetime.min.replace(tzinfo=UTC),
        reverse=True,
    )
    return QueueSnapshot(
        queue=name,
        taken_at=min(shot.taken_at for shot in shots),
        queued=sum(shot.queued for shot in shots),
        active=sum(shot.active for shot in shots),
        scheduled=sum(shot.scheduled for shot in shots),
        dead=sum(shot.dead for shot in shots),
        workers=sorted(workers.values(), key=lambda w: w.worker_id),
        recent_failures=failed[:failures],
        fairness=shots[0].fairness,
        top_users=top_users(shot.top_users for shot in shots),
    )


def top_users(shards: Iterable[list[tuple[str, int]]]) -> list[tuple[str, int]]:
    """The users holding the most queued jobs over every shard (a user lives in one)."""
    merged: Counter[str] = Counter()
    for shard in shards:
        merged.update(dict(shard))
    return merged.most_common(TOP_USERS)


def worker_status(worker_id: str, info: dict[str, Any], running: int) -> WorkerStatus:
    stats = info.get("stats") or {}
    seen = (info.get("metadata") or {}).get(SEEN_MS)
    uptime = stats.get("uptime")
    return WorkerStatus(
        worker_id=worker_id,
        running=running,
        last_seen=moment(seen) if isinstance(seen, int | float) else None,
        complete=stats.get("complete"),
        failed=stats.get("failed"),
        retried=stats.get("retried"),
        aborted=stats.get("aborted"),
        uptime=uptime / 1000 if isinstance(uptime, int | float) else None,
    )
