"""``saq``: jobs stored in SAQ's Redis layout and run by a SAQ worker.

Admission writes jobs exactly as SAQ's own enqueue script does (so SAQ's worker
and web UI see them), but from inside the admission script. The worker is SAQ's,
with three changes: the hub owns the signals, idle shutdown does not wait out
the upkeep timers, and an unreachable Redis makes it back off and log once
instead of spinning.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
from pydantic import Field
from redis.exceptions import ResponseError
from saq import Worker
from saq.queue.redis import RedisQueue

from taskhub import Options, PreparedJob, QueueBackend, TaskSpec, hookimpl
from taskhub.outage import OutageLog

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from taskhub.execution import TaskRunner
    from taskhub.hub import Hub

logger = logging.getLogger(__name__)
T = TypeVar("T")

# How long one idle dequeue blocks: bounds how long an idle worker takes to stop.
DEQUEUE_TIMEOUT = 1.0
OUTAGE_BACKOFF = 1.0

ENQUEUE_LUA = """
local Q = {}
-- ks = {incomplete zset, job key, queued list, abort key}; a = {job json, scheduled}
function Q.exists(ks, a)
  return redis.call('EXISTS', ks[2]) == 1 or redis.call('EXISTS', ks[4]) == 1
end
function Q.depth(ks, a)
  return redis.call('ZCARD', ks[1])
end
function Q.push(ks, a)
  redis.call('SET', ks[2], a[1])
  redis.call('ZADD', ks[1], a[2], ks[2])
  if a[2] == '0' then redis.call('RPUSH', ks[3], ks[2]) end
end
return Q
"""


class HardenedRedisQueue(RedisQueue):
    """SAQ's RedisQueue that survives Redis outages and runs on fakeredis."""

    def __init__(self, redis: Redis, name: str) -> None:
        super().__init__(redis, name=name, dump=orjson.dumps, load=orjson.loads)
        self._outage = OutageLog(f"Redis (queue {name!r})", logger)

    async def version(self) -> tuple[int, ...]:
        if self._version is None:
            try:
                info = await self.redis.info("server")
            except ResponseError:  # fakeredis has no INFO; BRPOPLPUSH works on both
                self._version = (6, 0, 0)
            else:
                self._version = tuple(int(i) for i in str(info["redis_version"]).split("."))
        return self._version

    async def dequeue(self, timeout: float = 0.0, poll_interval: float = 0.0) -> Any:
        try:
            job = await super().dequeue(timeout, poll_interval)
        except Exception as exc:
            self._outage.absorb(exc)
            await asyncio.sleep(OUTAGE_BACKOFF)
            return None
        self._outage.succeeded()
        return job

    async def schedule(self, lock: int = 1) -> list[str]:
        return await self._guarded(super().schedule(lock)) or []

    async def sweep(self, lock: int = 60, abort: float = 5.0) -> list[str]:
        return await self._guarded(super().sweep(lock, abort)) or []

    async def write_worker_info(self, worker_id: str, info: Any, ttl: int) -> None:
        await self._guarded(super().write_worker_info(worker_id, info, ttl))

    async def _guarded(self, call: Awaitable[T]) -> T | None:
        """Upkeep during an outage: note it once and skip this round."""
        try:
            return await call
        except Exception as exc:
            self._outage.absorb(exc)
            return None


class HubWorker(Worker):
    """SAQ's worker, minus its signal handlers, with an upkeep that stops at once."""

    SIGNALS = []  # noqa: RUF012  # the hub handles SIGINT/SIGTERM for every component

    async def upkeep(self) -> list[asyncio.Task[None]]:
        self._upkeep_tasks = await super().upkeep()
        return self._upkeep_tasks

    async def stop(self) -> None:
        for task in getattr(self, "_upkeep_tasks", []):
            task.cancel()  # they sleep for up to the sweep interval between runs
        await super().stop()


def job_function(runner: TaskRunner, spec: TaskSpec) -> Callable[..., Any]:
    async def run(ctx: dict[str, Any], *, user_id: str, payload: Any = None) -> Any:
        job = ctx["job"]
        return await runner.run(
            spec,
            job_id=job.key,
            user_id=user_id,
            payload=payload,
            attempt=job.attempts,
            enqueued_ms=job.queued,
        )

    return run


class SaqQueue(QueueBackend):
    name = "saq"
    enqueue_lua = ENQUEUE_LUA

    class Config(Options):
        name: str = Field("tasks", pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="queue name")
        concurrency: int = Field(10, ge=1, le=10_000, description="jobs run at once per worker")
        timeout: int = Field(
            60, ge=1, le=86_400, description="seconds a job may run; also bounds crash recovery"
        )
        retries: int = Field(3, ge=1, le=100, description="attempts in total, SAQ's meaning")
        ttl: int = Field(
            600, ge=-1, description="seconds a finished job is kept (0 forever, -1 not at all)"
        )
        sweep_interval: int = Field(10, ge=1, le=3_600, description="seconds between sweeps")
        shutdown_grace: float = Field(
            10, ge=0, le=3_600, description="seconds to finish jobs in flight on shutdown"
        )
        max_depth: int = Field(
            0, ge=0, le=1_000_000_000, description="most unfinished jobs; 0 for no bound"
        )

    config: Config

    def __init__(self, config: Options) -> None:
        super().__init__(config)
        name = self.config.name
        self._incomplete = f"saq:{name}:incomplete"
        self._queued = f"saq:{name}:queued"
        self._job_prefix = f"saq:job:{name}:"

    @property
    def max_depth(self) -> int:
        return self.config.max_depth

    def prepare(
        self, spec: TaskSpec, user_id: str, payload: Any, job_id: str | None = None
    ) -> PreparedJob:
        c = self.config
        key = job_id or uuid.uuid4().hex
        kwargs: dict[str, Any] = {"user_id": user_id}
        if payload is not None:
            kwargs["payload"] = payload
        job = {
            "function": spec.name,
            "kwargs": kwargs,
            "queue": c.name,
            "key": key,
            "timeout": c.timeout if spec.timeout is None else spec.timeout,
            "retries": spec.retries or c.retries,
            "ttl": c.ttl,
            "queued": int(time.time() * 1000),
            "status": "queued",
        }
        keys = [self._incomplete, self._job_prefix + key, self._queued, f"saq:abort:{key}"]
        return PreparedJob(job_id=key, keys=keys, args=[orjson.dumps(job), "0"])

    async def work(self, hub: Hub, stop: asyncio.Event) -> None:
        client = hub.connect_redis(blocking_timeout=DEQUEUE_TIMEOUT)
        queue = HardenedRedisQueue(client, self.config.name)
        await queue.connect()
        worker = HubWorker(
            queue,
            functions=[(name, job_function(hub.runner, spec)) for name, spec in hub.tasks.items()],
            concurrency=self.config.concurrency,
            timers={"sweep": self.config.sweep_interval},
            dequeue_timeout=DEQUEUE_TIMEOUT,
            shutdown_grace_period_s=self.config.shutdown_grace,  # type: ignore[arg-type]
        )
        running = asyncio.create_task(worker.start(), name="saq-worker")
        stopping = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            await worker.stop()
            with contextlib.suppress(asyncio.CancelledError):
                await running  # re-raises a worker that crashed
            await queue.disconnect()


@hookimpl
def register_queues(register: Callable[[type[QueueBackend]], None]) -> None:
    register(SaqQueue)
