"""``saq``: jobs stored in SAQ's Redis layout and run by a SAQ worker.

Admission writes jobs exactly as SAQ's own enqueue script does (so SAQ's tools
see them), but from inside the admission script. The worker is SAQ's loop with
taskhub's job lifecycle (:mod:`taskhub.builtin.saq_worker`); job state moves
only through fenced Lua transitions (:mod:`taskhub.builtin.saq_redis`); the
API and CLI read and steer jobs through :mod:`taskhub.builtin.saq_jobs`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import Field

from taskhub import Options, PreparedJob, QueueBackend, TaskSpec, hookimpl, request_id
from taskhub.builtin import saq_jobs
from taskhub.builtin.saq_jobs import job_info
from taskhub.builtin.saq_redis import HOLDS, REQUEST_ID, HardenedRedisQueue
from taskhub.builtin.saq_worker import HubWorker
from taskhub.jobs import AbortResult, JobInfo
from taskhub.keys import key_tag
from taskhub.redis_client import guarded
from taskhub.submission import unstorable_payload

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from taskhub.hub import Hub
    from taskhub.status import QueueSnapshot


# How long one idle dequeue blocks: bounds how long an idle worker takes to stop.
DEQUEUE_TIMEOUT = 1.0
# How often due retries are queued: a retry runs at most this late.
SCHEDULE_INTERVAL = 0.2
WEEK = 7 * 86_400

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


class SaqQueue(QueueBackend):
    name = "saq"
    enqueue_lua = ENQUEUE_LUA

    class Config(Options):
        name: str = Field("tasks", pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="queue name")
        concurrency: int = Field(10, ge=1, le=10_000, description="jobs run at once per worker")
        timeout: int = Field(60, ge=1, le=86_400, description="seconds one attempt may run")
        retries: int = Field(3, ge=1, le=100, description="attempts in total, SAQ's meaning")
        retry_delay: float = Field(1, ge=0, le=86_400, description="seconds before the 1st retry")
        retry_backoff: float = Field(
            60, ge=0, le=86_400, description="cap on the doubling retry delay; 0: no doubling"
        )
        heartbeat: float = Field(
            10, ge=0.1, le=3_600, description="seconds without a beat before a job is re-run"
        )
        ttl: int = Field(
            600, ge=-1, description="seconds a finished job is kept (0 forever, -1 not at all)"
        )
        dead_letter_ttl: int = Field(
            WEEK, ge=0, description="seconds a job out of attempts is kept (0 forever)"
        )
        sweep_interval: int = Field(
            5, ge=1, le=3_600, description="seconds between looks for jobs of dead workers"
        )
        shutdown_grace: float = Field(
            10, ge=0, le=3_600, description="seconds to finish jobs in flight on shutdown"
        )
        max_depth: int = Field(
            0, ge=0, le=1_000_000_000, description="most unfinished jobs; 0 for no bound"
        )

    config: Config

    def __init__(self, config: Options) -> None:
        super().__init__(config)
        self._tag_keys("")
        self._jobs: HardenedRedisQueue | None = None

    def _tag_keys(self, tag: str) -> None:
        """Name the queue's Redis keys; ``tag`` (see keys.key_tag) keeps them in one slot."""
        self._tag = tag
        self.redis_name = name = tag + self.config.name
        self._incomplete = f"saq:{name}:incomplete"
        self._queued = f"saq:{name}:queued"
        self._job_prefix = f"saq:job:{name}:"

    @property
    def max_depth(self) -> int:
        return self.config.max_depth

    def prepare(
        self,
        spec: TaskSpec,
        user_id: str,
        payload: Any,
        job_id: str | None = None,
        holds: Sequence[str] = (),
    ) -> PreparedJob:
        c = self.config
        key = job_id or uuid.uuid4().hex
        kwargs: dict[str, Any] = {"user_id": user_id}
        if payload is not None:
            kwargs["payload"] = payload

        def option(value: float | None, default: float) -> float:
            return default if value is None else value

        job = {
            "function": spec.name,
            "kwargs": kwargs,
            "queue": self.redis_name,
            "key": key,
            "timeout": option(spec.timeout, c.timeout),
            "heartbeat": option(spec.heartbeat, c.heartbeat),
            "retries": option(spec.retries, c.retries),
            "ttl": c.ttl,
            "retry_delay": option(spec.retry_delay, c.retry_delay),
            "retry_backoff": option(spec.retry_backoff, c.retry_backoff),
            "queued": int(time.time() * 1000),
            "status": "queued",
        }
        meta: dict[str, Any] = {}
        if holds:
            meta[HOLDS] = list(holds)
        submitted_by = request_id.current.get()
        if submitted_by is not None:  # the worker logs its lines under the same id
            meta[REQUEST_ID] = submitted_by
        if meta:
            job["meta"] = meta
        abort = f"saq:abort:{self._tag}{key}"
        keys = [self._incomplete, self._job_prefix + key, self._queued, abort]
        try:
            stored = orjson.dumps(job)
        except orjson.JSONEncodeError as exc:  # JSON the parser took, e.g. an int over 64 bits
            raise unstorable_payload(str(exc)) from None
        return PreparedJob(job_id=key, keys=keys, args=[stored, "0"])

    def redis_queue(self, client: Redis) -> HardenedRedisQueue:
        c = self.config
        return HardenedRedisQueue(client, self.redis_name, c.heartbeat, c.dead_letter_ttl)

    def beat_interval(self, hub: Hub) -> float:
        """A third of the shortest heartbeat any task has: two beats may be lost."""
        beats = [spec.heartbeat for spec in hub.tasks.values() if spec.heartbeat is not None]
        return min([self.config.heartbeat, *beats]) / 3

    async def work(self, hub: Hub, stop: asyncio.Event) -> None:
        queue = self.redis_queue(hub.connect_redis(blocking_timeout=DEQUEUE_TIMEOUT))
        await queue.connect()
        worker = HubWorker(
            queue,
            beat_interval=self.beat_interval(hub),
            runner=hub.runner,
            specs=hub.tasks,
            metrics=hub.job_metrics,
            functions=[],  # jobs run through ``specs``
            concurrency=self.config.concurrency,
            timers={"sweep": self.config.sweep_interval, "schedule": SCHEDULE_INTERVAL},  # type: ignore[typeddict-item]
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

    # ------------------------------------------------------------------ inspection

    async def open(self, hub: Hub) -> None:
        assert hub.redis is not None
        self._tag_keys(key_tag(hub.settings.redis))
        self._jobs = self.redis_queue(hub.redis)  # shares the hub's client; closed by the hub

    async def status(self, job_id: str) -> JobInfo | None:
        return await guarded(saq_jobs.status(self._queue(), job_id))

    async def abort(self, job_id: str) -> AbortResult:
        return await guarded(saq_jobs.abort(self._queue(), job_id))

    async def check(self) -> None:
        await guarded(self._queue().redis.exists(self._incomplete))

    async def dead_letters(self, limit: int | None = None) -> list[JobInfo]:
        entries = await guarded(self._queue().dead_entries(limit))
        return [job_info(job) for job, _ in entries]

    async def retry_dead(self, job_ids: list[str] | None) -> list[str]:
        return await guarded(saq_jobs.retry_dead(self._queue(), job_ids))

    async def purge_dead(self) -> int:
        return await guarded(self._queue().purge_dead())

    async def depth(self) -> dict[str, int]:
        return await self._queue().depth()

    async def snapshot(self, failures: int = 5) -> QueueSnapshot:
        return await guarded(saq_jobs.snapshot(self._queue(), failures))

    def _queue(self) -> HardenedRedisQueue:
        if self._jobs is None:
            raise RuntimeError("the queue is not open")
        return self._jobs


@hookimpl
def register_queues(register: Callable[[type[QueueBackend]], None]) -> None:
    register(SaqQueue)
