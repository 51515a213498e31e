"""Jobs put straight into a queue, as admission would store them."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from taskhub.builtin.saq.redis_queue import HardenedRedisQueue


async def store_queued(queue: HardenedRedisQueue, **fields: Any) -> str:
    """Store a job as admission does (last in line) and return its id."""
    key = uuid.uuid4().hex
    job = {"queue": queue.name, "key": key, "status": "queued", **fields}
    job_id = queue.job_id(key)
    await queue.redis.set(job_id, orjson.dumps(job))
    await queue.redis.zadd(queue._incomplete, {job_id: 0})
    await queue.redis.rpush(queue._queued, job_id)
    return job_id
