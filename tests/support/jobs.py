"""Jobs put straight into a queue, as admission would store them; a queue's worker in
this process."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import orjson

from taskhub.hub.runner import TaskRunner
from taskhub.store.clients import connect
from taskhub.store.cluster_router import admission_pipeline
from taskhub.store.connection import connection_settings

if TYPE_CHECKING:
    from taskhub.builtin.saq.queue import SaqQueue
    from taskhub.builtin.saq.redis_queue import HardenedRedisQueue
    from taskhub.components import TaskSpec
    from taskhub.config.models import RedisSettings


async def store_queued(queue: HardenedRedisQueue, **fields: Any) -> str:
    """Store a job as admission does (last in line) and return its id."""
    key = uuid.uuid4().hex
    job = {"queue": queue.name, "key": key, "status": "queued", **fields}
    job_id = queue.job_id(key)
    await queue.redis.set(job_id, orjson.dumps(job))
    await queue.redis.zadd(queue._incomplete, {job_id: 0})
    await queue.redis.rpush(queue._queued, job_id)
    return job_id


@contextlib.asynccontextmanager
async def working(queue: SaqQueue, spec: TaskSpec, settings: RedisSettings) -> AsyncIterator[None]:
    """``queue.work`` in this process for as long as the block lasts."""
    context = SimpleNamespace(
        connect_redis=lambda blocking_timeout: connect(settings, blocking_timeout=blocking_timeout),
        connect_scripts=lambda: admission_pipeline(connection_settings(settings)),
        runner=TaskRunner([]),
        tasks={spec.name: spec},
        job_counters=None,
    )
    stop = asyncio.Event()
    work = asyncio.create_task(queue.work(context, stop))  # type: ignore[arg-type]
    try:
        yield
    finally:
        stop.set()
        await work


async def eventually(check: Any, timeout: float = 20) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)
