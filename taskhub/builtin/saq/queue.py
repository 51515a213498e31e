"""``saq``: jobs stored in SAQ's Redis layout and run by a SAQ worker.

Admission writes jobs exactly as SAQ's own enqueue script does (so SAQ's tools
see them), but from inside the admission script. The worker is SAQ's loop with
taskhub's job lifecycle (:mod:`taskhub.builtin.saq.worker`); job state moves
only through fenced Lua transitions (:mod:`taskhub.builtin.saq.redis_queue`); the
API and CLI read and steer jobs through :mod:`taskhub.builtin.saq.jobs`.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

import orjson
from pydantic import Field

from taskhub import (
    Attempts,
    AttemptTimeout,
    Heartbeat,
    Options,
    PluginContext,
    PreparedJob,
    QueueBackend,
    RetryBackoff,
    RetryDelay,
    ScriptConnection,
    TaskSpec,
    UnstorablePayload,
    hookimpl,
)
from taskhub.builtin.saq import jobs as saq_jobs
from taskhub.builtin.saq.jobs import DELAYED, job_info
from taskhub.builtin.saq.line import LINE_LUA
from taskhub.builtin.saq.redis_queue import HOLDS, REQUEST_ID, HardenedRedisQueue
from taskhub.builtin.saq.settled import BLOCK_S, SettledReader
from taskhub.builtin.saq.worker import HubWorker
from taskhub.jobs import MAX_WEIGHT, AbortOutcome, AbortResult, JobInfo, UserId
from taskhub.monitoring import request_id, trace_context
from taskhub.store.clients import redis_call
from taskhub.store.sharding import MAX_SHARDS, ShardBy, Shards

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from taskhub.jobs import QueueSnapshot


# How long one idle dequeue blocks: bounds how long an idle worker takes to stop.
DEQUEUE_TIMEOUT = 1.0
# How often due retries are queued: a retry runs at most this late.
SCHEDULE_INTERVAL = 0.2
WEEK = 7 * 86_400
# Jobs per turn a user's weight may give him.
Weight = Annotated[int, Field(ge=1, le=MAX_WEIGHT)]
T = TypeVar("T")

ENQUEUE_LUA = (
    LINE_LUA
    + """
local Q = {}
-- ks = {incomplete zset, job key, queued list, abort key};
-- a = {job json, run at (epoch s; '0': now), fairness, user id, priority}
function Q.exists(ks, a)
  return redis.call('EXISTS', ks[2]) == 1 or redis.call('EXISTS', ks[4]) == 1
end
function Q.depth(ks, a)
  return redis.call('ZCARD', ks[1])
end
function Q.push(ks, a)
  redis.call('SET', ks[2], a[1])
  redis.call('ZADD', ks[1], a[2], ks[2])
  if a[2] == '0' then line_of(ks[3], a[3] == 'user').push(ks[2], a[4], a[5], false) end
end
return Q
"""
)


class SaqQueue(QueueBackend):
    name = "saq"
    enqueue_lua = ENQUEUE_LUA

    class Config(Options):
        name: str = Field(
            "tasks",
            pattern=r"^[A-Za-z0-9_.-]{1,64}$",
            description="SAQ queue name: keys saq:<name>:* and saq:job:<name>:*",
        )
        concurrency: int = Field(
            10, ge=1, le=10_000, description="jobs one worker process runs at once"
        )
        timeout: AttemptTimeout = 60
        retries: Attempts = 3
        retry_delay: RetryDelay = 1
        retry_backoff: RetryBackoff = 60
        heartbeat: Heartbeat = 10
        ttl: int = Field(
            600,
            ge=-1,
            description="seconds a completed or aborted job stays visible "
            "(0: forever, -1: not at all)",
        )
        dead_letter_ttl: int = Field(
            WEEK,
            ge=0,
            description="seconds a dead letter (a job out of attempts) is kept; 0: forever",
        )
        sweep_interval: int = Field(
            5,
            ge=1,
            le=3_600,
            description="seconds between looks for jobs whose worker stopped beating",
        )
        shutdown_grace: float = Field(
            10,
            ge=0,
            le=3_600,
            description="seconds a stopping worker gives jobs in flight; the rest go back queued",
        )
        max_depth: int = Field(
            0,
            ge=0,
            le=1_000_000_000,
            description="most jobs admitted and not finished (above it: 503 queue_full), split "
            "over the shards; 0: no bound",
        )
        shards: int = Field(
            1,
            ge=1,
            le=MAX_SHARDS,
            description="queues the jobs spread over, each in one hash slot; "
            "1 keeps keys as they are",
        )
        shard_by: ShardBy = Field(
            "user",
            description="user: a user's limits and jobs in his home shard; "
            "round_robin: jobs in turn",
        )
        fairness: Literal["none", "user"] = Field(
            "none",
            description="none: one line, first in first out (by priority); user: workers "
            "take jobs round-robin across the users with queued jobs",
        )
        weights: dict[UserId, Weight] = Field(
            default_factory=dict,
            max_length=10_000,
            description="with fairness user: jobs a user gets per turn (default 1); "
            "a worker's start writes them, the admin endpoint changes them",
        )
        max_delay: int = Field(
            WEEK,
            ge=1,
            le=365 * 86_400,
            description="seconds ahead a job may be delayed (POST /task delay or run_at)",
        )

    config: Config

    def __init__(self, config: Options) -> None:
        super().__init__(config)
        self._lay_out(Shards(self.config.shards, self.config.shard_by, self.config.name))
        self._jobs: list[HardenedRedisQueue] = []
        self._context: PluginContext | None = None
        self._readers: dict[int, SettledReader] = {}  # by shard, made on the first wait
        self._waits_ended = False

    def _lay_out(self, shards: Shards) -> None:
        self.shards = shards
        names = [shards.queue_name(i) for i in range(shards.count)]
        # Per shard: incomplete zset, queued list, job key prefix and abort key prefix.
        # SAQ keeps the abort key outside the queue's slot (``saq:abort:<key>``, SAQ
        # issue 256): a tagged layout keeps it in the queue's namespace instead.
        self._layouts = [
            (
                f"saq:{name}:incomplete",
                f"saq:{name}:queued",
                f"saq:job:{name}:",
                f"saq:{name}:abort:" if shards.tagged else "saq:abort:",
            )
            for name in names
        ]
        self._names = names
        self._max_depth = -(-self.config.max_depth // shards.count)  # rounded up

    def layout(self, *, cluster: bool = False) -> Shards:
        if cluster and not self.shards.tagged:
            c = self.config
            self._lay_out(Shards(c.shards, c.shard_by, c.name, tagged=True))
        return self.shards

    @property
    def max_depth(self) -> int:
        """Each shard's share of ``max_depth``: a script sees only its own shard."""
        return self._max_depth

    @property
    def max_delay(self) -> float:
        return float(self.config.max_delay)

    def prepare(
        self,
        spec: TaskSpec,
        user_id: str,
        payload: Any,
        job_id: str | None = None,
        holds: Sequence[str] = (),
        *,
        priority: int = 0,
        run_at: float | None = None,
    ) -> PreparedJob:
        c, shards = self.config, self.shards
        if shards.count == 1:  # the common case, on the request path: no lookups
            shard, key = 0, job_id or secrets.token_hex(16)
        else:
            shard = shards.place(user_id, job_id)
            key = shards.job_id(job_id or secrets.token_hex(16), shard)
        incomplete, queued, job_prefix, abort_prefix = self._layouts[shard]
        kwargs: dict[str, Any] = {"user_id": user_id}
        if payload is not None:
            kwargs["payload"] = payload

        def option(value: float | None, default: float) -> float:
            return default if value is None else value

        job = {
            "function": spec.name,
            "kwargs": kwargs,
            "queue": self._names[shard],
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
        if priority:
            job["priority"] = priority
        meta: dict[str, Any] = {}
        scheduled = "0"
        if run_at is not None:  # waits in the incomplete set until the schedule upkeep
            job["scheduled"] = run_at = round(run_at, 3)
            meta[DELAYED] = True
            scheduled = repr(run_at)
        if holds:
            meta[HOLDS] = list(holds)
        submitted_by = request_id.current.get()
        if submitted_by is not None:  # the worker logs its lines under the same id
            meta[REQUEST_ID] = submitted_by
        parent = trace_context.traceparent.get()
        if parent is not None:  # tracing is on: the job's span is the admission's child
            meta[trace_context.TRACEPARENT] = parent
        if meta:
            job["meta"] = meta
        keys = [incomplete, job_prefix + key, queued, abort_prefix + key]
        try:
            stored = orjson.dumps(job)
        except orjson.JSONEncodeError as exc:  # JSON the parser took, e.g. an int over 64 bits
            raise UnstorablePayload(str(exc)) from None
        args: list[str | bytes] = [stored, scheduled, c.fairness, user_id, str(priority)]
        return PreparedJob(job_id=key, keys=keys, args=args, shard=shard)

    def redis_queue(
        self, client: Redis, shard: int = 0, scripts: ScriptConnection | None = None
    ) -> HardenedRedisQueue:
        c = self.config
        name = self._names[shard]
        return HardenedRedisQueue(
            client, name, c.heartbeat, c.dead_letter_ttl, scripts, fairness=c.fairness
        )

    def beat_interval(self, context: PluginContext) -> float:
        """A third of the shortest heartbeat any task has: two beats may be lost."""
        beats = [spec.heartbeat for spec in context.tasks.values() if spec.heartbeat is not None]
        return min([self.config.heartbeat, *beats]) / 3

    async def work(self, context: PluginContext, stop: asyncio.Event) -> None:
        client = context.connect_redis(blocking_timeout=DEQUEUE_TIMEOUT)
        scripts = context.connect_scripts()  # every job's steps, pipelined
        shards = [self.redis_queue(client, i, scripts) for i in range(self.shards.count)]
        for shard in shards:
            await shard.connect()
            if self.config.weights:
                await shard.set_weights(self.config.weights)
        worker = HubWorker(
            shards[0],
            shards=shards,
            beat_interval=self.beat_interval(context),
            runner=context.runner,
            specs=context.tasks,
            metrics=context.job_counters,
            functions=[],  # jobs run through ``specs``
            concurrency=self.config.concurrency,
            timers={"sweep": self.config.sweep_interval, "schedule": SCHEDULE_INTERVAL},
            dequeue_timeout=DEQUEUE_TIMEOUT,
            shutdown_grace_period_s=self.config.shutdown_grace,
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
            await shards[0].disconnect()  # closes the client every shard shares
            if scripts is not None:
                await scripts.close()

    # ------------------------------------------------------------------ inspection

    async def open(self, context: PluginContext) -> None:
        # They share the process's client; the kernel closes it.
        self._jobs = [self.redis_queue(context.redis, i) for i in range(self.shards.count)]
        self._context = context  # waits read with clients of their own

    async def close(self) -> None:
        readers, self._readers = list(self._readers.values()), {}
        for reader in readers:
            await reader.close()

    async def status(self, job_id: str) -> JobInfo | None:
        queue = self._queue_of(job_id)
        return None if queue is None else await redis_call(saq_jobs.status(queue, job_id))

    async def wait(self, job_id: str, timeout: float) -> JobInfo | None:
        shard = self.shards.shard_of(job_id)
        if shard is None:
            return None
        queue = self._queues()[shard]
        return await redis_call(saq_jobs.wait(queue, self._reader(shard), job_id, timeout))

    def end_waits(self) -> None:
        self._waits_ended = True
        for reader in self._readers.values():
            reader.end()

    def waiting(self) -> int:
        """Waiters in this process, over every shard (tests and benchmarks count them)."""
        return sum(reader.waiting for reader in self._readers.values())

    def _reader(self, shard: int) -> SettledReader:
        reader = self._readers.get(shard)
        if reader is None:
            context = self._context
            if context is None:
                raise RuntimeError("the queue is not open")

            def connect() -> Redis:
                assert context is not None
                return context.connect_redis(blocking_timeout=BLOCK_S)

            stream = self._queues()[shard].settled_key
            reader = self._readers[shard] = SettledReader(stream, connect, self._names[shard])
            if self._waits_ended:
                reader.end()
        return reader

    async def abort(self, job_id: str) -> AbortResult:
        queue = self._queue_of(job_id)
        if queue is None:
            return AbortResult(AbortOutcome.UNKNOWN)
        return await redis_call(saq_jobs.abort(queue, job_id))

    async def check(self) -> None:
        await redis_call(self._queues()[0].redis.exists(self._layouts[0][0]))

    async def dead_letters(self, limit: int | None = None) -> list[JobInfo]:
        shards = await self._each(lambda queue: queue.dead_entries(limit))
        return [job_info(job) for job in saq_jobs.oldest_first(shards, limit)]

    async def retry_dead(self, job_ids: list[str] | None) -> list[str]:
        if job_ids is None:
            moved = await self._each(lambda queue: saq_jobs.retry_dead(queue, None))
        else:  # ids name their shard: read only those shards' dead letters
            wanted: dict[HardenedRedisQueue, list[str]] = {}
            for job_id in job_ids:
                queue = self._queue_of(job_id)
                if queue is not None:
                    wanted.setdefault(queue, []).append(job_id)
            retries = (saq_jobs.retry_dead(queue, ids) for queue, ids in wanted.items())
            moved = await redis_call(asyncio.gather(*retries))
        return [job_id for shard in moved for job_id in shard]

    async def purge_dead(self) -> int:
        return sum(await self._each(lambda queue: queue.purge_dead()))

    async def weight(self, user_id: str) -> int:
        # Every shard holds the same weights: read the user's home shard.
        home = self._queues()[self.shards.shard_for(user_id)]
        return await redis_call(home.weight(user_id))

    async def set_weight(self, user_id: str, weight: int | None) -> int:
        value = self.config.weights.get(user_id, 1) if weight is None else weight
        await self._each(lambda queue: queue.set_weights({user_id: value}))
        return value

    async def depth(self) -> dict[str, int]:
        total: Counter[str] = Counter()
        depths = asyncio.gather(*(queue.depth() for queue in self._queues()))
        for depth in await redis_call(depths):
            total.update(depth)
        return dict(total)

    async def snapshot(self, failures: int = 5) -> QueueSnapshot:
        shots = await self._each(lambda queue: saq_jobs.snapshot(queue, failures))
        return saq_jobs.merge_snapshots(self.config.name, shots, failures)

    async def _each(self, call: Callable[[HardenedRedisQueue], Awaitable[T]]) -> list[T]:
        """``call`` on every shard at once (one shard: just the call)."""
        queues = self._queues()
        if len(queues) == 1:
            return [await redis_call(call(queues[0]))]
        return list(await redis_call(asyncio.gather(*(call(queue) for queue in queues))))

    def _queue_of(self, job_id: str) -> HardenedRedisQueue | None:
        """The shard a job id names (ids carry their shard); None: no job of this queue."""
        shard = self.shards.shard_of(job_id)
        return None if shard is None else self._queues()[shard]

    def _queues(self) -> list[HardenedRedisQueue]:
        if not self._jobs:
            raise RuntimeError("the queue is not open")
        return self._jobs


@hookimpl
def register_queues(register: Callable[[type[QueueBackend]], None]) -> None:
    register(SaqQueue)
