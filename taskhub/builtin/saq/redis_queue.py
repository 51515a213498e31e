"""SAQ's Redis queue, hardened: every change of a job's state is one fenced Lua script.

SAQ moves a job between its lists in several round trips and decides that a
job is stuck from fields that a just-dequeued job has not written yet (SAQ
issue 277: its sweep can abort and re-run a job a worker has just started).
Here:

- a worker *claims* a dequeued job (attempt + 1, status active, first
  heartbeat) only while the job is still in the active list;
- a running job's liveness is a per-job heartbeat, a score in the
  ``saq:<queue>:heartbeats`` sorted set on the Redis clock, refreshed by its
  worker for every job it runs;
- the sweep takes a job away from its worker only when that heartbeat is older
  than the job's ``heartbeat`` seconds, checked again inside the same script
  that moves it; a job seen in the active list without any heartbeat (dequeued,
  not yet claimed) gets one heartbeat period of grace first;
- every transition is fenced: a worker's by its own (worker id, attempt), the
  sweep's and the API's by the exact stored job they read, so whoever lost a
  race changes nothing;
- a transition that finds the job exactly as it would leave it changes nothing
  and reports done, so a worker whose call timed out (the reply lost, the call run
  or not) asks again until Redis answers, and neither loses the claim or the outcome
  nor applies it twice (a late copy of the lost call is such a repeat too);
- dead letters (jobs out of attempts) are indexed in ``saq:<queue>:dead``;
- nothing is published: taskhub reads job state and never subscribes (and a
  Redis Cluster would broadcast every PUBLISH to every node); a job someone
  waits for (a marker key) is added to the shard's ``settled`` stream by the
  step that settles it, which each process reads with one blocking XREAD.

An unreachable Redis makes upkeep skip a round and log once, never spin.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import operator
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
from redis.exceptions import ResponseError
from saq.job import Job, Status
from saq.queue.redis import RedisQueue
from saq.utils import now

from taskhub import ScriptCall, ScriptConnection
from taskhub.builtin.saq.line import FAIR, FIFO, LINE_LUA, WAKE
from taskhub.store.clients import is_unavailable
from taskhub.store.outage import OutageLog

if TYPE_CHECKING:
    from redis.asyncio import Redis

logger = logging.getLogger(__name__)
T = TypeVar("T")

OUTAGE_BACKOFF = 1.0
# Seconds between the asks of a worker's transition whose reply was lost (move's persist).
ASK_AGAIN = 0.2
# The job's ``meta`` entry listing the sorted sets it holds a slot in (concurrency limits).
HOLDS = "holds"
# The worker-info metadata entry saying when the worker wrote it (epoch ms), for status.
SEEN_MS = "seen_ms"
# The job's ``meta`` entry with the id of the request that submitted it.
REQUEST_ID = "request_id"
# The error of a job aborted by request (DELETE /task/{id}).
ABORT_REQUESTED = "aborted by request"
WORKER_LOST = "worker lost: no heartbeat for {:g} s"
# Job's fields with their defaults, and all their values at once (see serialize).
JOB_FIELDS = tuple((field.name, field.default) for field in dataclasses.fields(Job))
JOB_VALUES = operator.attrgetter(*(name for name, _ in JOB_FIELDS))
# Script calls a worker keeps on the wire at once (see HardenedRedisQueue._flush).
STEPS_IN_FLIGHT = 2
# Entries kept in a shard's stream of settled jobs that someone waits for (trimmed
# approximately): far more than settle within one reader's round trip.
SETTLED_MAXLEN = 10_000


STEP_LUA = (
    LINE_LUA
    + f"""
-- Many jobs in one round trip: the fenced transitions that callers asked for since
-- the last call, each one as if alone, then up to ARGV[1] jobs taken from the queue.
-- KEYS: active, queued, incomplete, heartbeats, dead, settled, then the job of each
--   transition
-- ARGV: jobs to take, 'LMOVE' or 'RPOPLPUSH', the waiting markers' prefix, fairness
--   ('none' or 'user'), then per transition three: 'fence-kind action ttl-ms score
--   stale-ms' (one string: fewer arguments to pack for the client, a cost per
--   argument), the fence, the new json
-- Returns {{{{1 (done), 0 (fence lost), 2 (abort requested: a run's outcome refused)
-- or an error text, per transition}}, {{id, job, ...}}}}.
local active, queued, incomplete, beats, dead = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local settled, waiting = KEYS[6], ARGV[3]
local L = line_of(queued, ARGV[4] == '{FAIR}')
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function user_of(raw)
  local j = cjson.decode(raw)
  if type(j.kwargs) == 'table' and j.kwargs.user_id then return tostring(j.kwargs.user_id) end
  return nil
end

local function transition(job, kind, fence, action, new, ttl, score, stale)
  local current = redis.call('GET', job)
  if not current then return 0 end
  -- The job is exactly as this transition leaves it: a repeat, by a caller whose reply
  -- was lost, or the lost call itself arriving late. It happened once: change nothing.
  -- Not so for a move that leaves the job's record as the caller read it (new equals
  -- the stored-bytes fence: a taken job put back unclaimed): only its lists say whether
  -- it happened, so it is done under its fence (taken as a repeat, such a job stayed in
  -- the active list for good, "re-queued" by every sweep).
  if current == new and new ~= fence then return 1 end
  local run = kind == 'run' or kind == 'stop'
  if run then
    local j = cjson.decode(current)
    if tostring(j.worker_id) .. ':' .. tostring(j.attempts) ~= fence then return 0 end
    -- An abort was requested while it ran: only the abort may end this run.
    if kind == 'run' and j.status == 'aborting' then return 2 end
  elseif current ~= fence then
    return 0
  end
  if kind == 'dead' and not redis.call('ZSCORE', dead, job) then return 0 end
  if stale >= 0 then
    local beat = redis.call('ZSCORE', beats, job)
    if not beat or now - tonumber(beat) <= stale then return 0 end
  end
  if action == 'claim' then
    local was = cjson.decode(current).status
    if was ~= 'queued' and was ~= 'new' then
      -- a stale entry (the job runs elsewhere or is done): drop it, never run it again
      redis.call('LREM', active, -1, job)
      return 0
    end
    if not redis.call('LPOS', active, job) then return 0 end
    redis.call('ZADD', beats, now, job)
    redis.call('SET', job, new)
  elseif action == 'mark' then
    redis.call('SET', job, new)
  else
    redis.call('LREM', active, 0, job)
    -- A run is never also queued (claims take only queued jobs), so a worker's own
    -- move skips scanning the queue, which costs O(queue length) per job.
    if not run then L.remove(job, user_of(new)) end
    redis.call('ZREM', beats, job)
    redis.call('ZREM', dead, job)
    if action == 'finish' or action == 'dead' then
      redis.call('ZREM', incomplete, job)
      local j = cjson.decode(new)
      if type(j.meta) == 'table' and type(j.meta.{HOLDS}) == 'table' then
        for _, slots in ipairs(j.meta.{HOLDS}) do redis.call('ZREM', slots, j.key) end
      end
      if ttl < 0 then
        redis.call('DEL', job)
      elseif ttl == 0 then
        redis.call('SET', job, new)
      else
        redis.call('SET', job, new, 'PX', ttl)
      end
      if action == 'dead' then redis.call('ZADD', dead, score, job) end
      -- Someone waits for this job (GET /task/{{id}}?wait=N): tell every process's
      -- reader, with the job itself when it is gone (ttl -1). Unwatched: one EXISTS.
      -- The marker is the job's id under the queue's namespace: in the job's slot.
      if redis.call('EXISTS', waiting .. tostring(j.key)) == 1 then
        if ttl < 0 then
          redis.call('XADD', settled, 'MAXLEN', '~', {SETTLED_MAXLEN}, '*',
            'job', job, 'status', tostring(j.status), 'data', new)
        else
          redis.call('XADD', settled, 'MAXLEN', '~', {SETTLED_MAXLEN}, '*',
            'job', job, 'status', tostring(j.status))
        end
      end
    else
      redis.call('SET', job, new)
      if action == 'later' then
        redis.call('ZADD', incomplete, score, job)
      else
        redis.call('ZADD', incomplete, 0, job)
        L.place(job, new, action == 'front')
      end
    end
  end
  return 1
end

local done = {{}}
for i = 7, #KEYS do
  local a = (i - 7) * 3 + 4
  local kind, action, ttl, score, stale =
    string.match(ARGV[a + 1], '^(%S+) (%S+) (%S+) (%S+) (%S+)$')
  local ok, result = pcall(transition, KEYS[i], kind, ARGV[a + 2], action,
    ARGV[a + 3], tonumber(ttl), score, tonumber(stale))
  if ok then done[#done + 1] = result else done[#done + 1] = tostring(result) end
end

-- Taking a job gives it its first heartbeat at once, so the sweep never has to
-- guess whether a listed job without one has just been taken.
local taken = {{}}
local function list_take()
  if ARGV[2] == 'LMOVE' then return redis.call('LMOVE', queued, active, 'LEFT', 'RIGHT') end
  return redis.call('RPOPLPUSH', queued, active)
end
local wanted = tonumber(ARGV[1])
while wanted > 0 do
  local id, listed = L.take(list_take)
  if not id then break end
  if id == L.wake then  -- the token that wakes an idle worker, not a job: take on
    redis.call('LREM', active, 1, id)
  else
    wanted = wanted - 1
    if not listed then redis.call('RPUSH', active, id) end
    local raw = redis.call('GET', id)
    if raw then
      redis.call('ZADD', beats, now, id)
      taken[#taken + 1] = id
      taken[#taken + 1] = raw
    else  -- listed but gone (deleted): drop the stale entry
      redis.call('LREM', active, 0, id)
      redis.call('ZREM', incomplete, id)
      redis.call('ZREM', beats, id)
    end
  end
end
return {{done, taken}}
"""
)

SWEEP_LUA = """
-- KEYS: lock, active, heartbeats; ARGV: lock ms.
-- Returns {job id, stored job, ms since its last heartbeat (-1: none until now)}
-- for each job in the active list, once per lock period across all workers.
if not redis.call('SET', KEYS[1], 1, 'NX', 'PX', ARGV[1]) then return {} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out, seen = {}, {}
for _, id in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do
  if not seen[id] then
    seen[id] = true
    local beat = redis.call('ZSCORE', KEYS[3], id)
    local age = -1
    if beat then age = now - tonumber(beat) else redis.call('ZADD', KEYS[3], now, id) end
    out[#out + 1] = {id, redis.call('GET', id) or false, age}
  end
end
for _, id in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
  if not seen[id] then redis.call('ZREM', KEYS[3], id) end
end
return out
"""

BEAT_LUA = """
-- KEYS: heartbeats; ARGV: job ids. Refreshes only jobs still claimed (XX).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local args = {}
for _, id in ipairs(ARGV) do args[#args + 1] = now; args[#args + 1] = id end
if #args > 0 then return redis.call('ZADD', KEYS[1], 'XX', 'CH', unpack(args)) end
return 0
"""

SCHEDULE_LUA = (
    LINE_LUA
    + """
-- KEYS: incomplete, queued; ARGV: fairness. Queues jobs whose retry or run time
-- (score, epoch s) has come. Idempotent, so unlike SAQ's it needs no lock and can
-- run every fraction of a second.
local L = line_of(KEYS[2], ARGV[1] == 'user')
local t = redis.call('TIME')
local due = redis.call('ZRANGEBYSCORE', KEYS[1], 1, tonumber(t[1]) + tonumber(t[2]) / 1e6)
for _, id in ipairs(due) do
  redis.call('ZADD', KEYS[1], 0, id)
  local raw = redis.call('GET', id)
  if raw then L.place(id, raw, false) else redis.call('RPUSH', KEYS[2], id) end
end
return due
"""
)

PURGE_LUA = """
-- KEYS: dead. Deletes every dead letter and the index; returns how many existed.
local removed = 0
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  removed = removed + redis.call('DEL', id)
end
redis.call('DEL', KEYS[1])
return removed
"""


class Fence(enum.StrEnum):
    # The worker's own run: stored worker id and attempt must match, and no abort may
    # have been requested meanwhile (else the move answers Moved.ABORTING, changing nothing).
    RUN = "run"
    STOP = "stop"  # as RUN, to end the run as aborted: whether or not one was requested
    STORED = "bytes"  # the stored job must be exactly what the caller read
    DEAD = "dead"  # as STORED, and the job must be in the dead-letter index


class Moved(enum.IntEnum):
    """What a transition did; falsy only when its fence was lost."""

    LOST = 0  # the fence no longer holds: nothing changed
    DONE = 1
    ABORTING = 2  # Fence.RUN only: an abort was requested, so this outcome was refused


class Move(enum.StrEnum):
    CLAIM = "claim"  # dequeued -> active, first heartbeat
    MARK = "mark"  # rewrite the job where it is
    FINISH = "finish"  # out of every list, kept for its ttl
    DEAD = "dead"  # out of every list, into the dead-letter index
    FRONT = "front"  # back to the head of the queue
    BACK = "back"  # to the tail of the queue
    LATER = "later"  # scheduled: SAQ's schedule upkeep queues it when due


class HardenedRedisQueue(RedisQueue):
    """SAQ's RedisQueue with fenced transitions, a safe sweep and outage guards."""

    def __init__(
        self,
        redis: Redis,
        name: str,
        heartbeat: float,
        dead_letter_ttl: int,
        scripts: ScriptConnection | None = None,
        *,
        fairness: str = FIFO,
    ) -> None:
        super().__init__(redis, name=name, dump=orjson.dumps, load=orjson.loads)
        self.heartbeat = heartbeat
        self.fairness = fairness
        self.ring_key = self.namespace("ring")
        self.waking_key = self.namespace("waking")
        self.prio_key = self.namespace("prio")
        self.wake_token = self.namespace(WAKE).encode()
        self.lined_key = self.namespace("lined")
        self.backlog_key = self.namespace("backlog")
        self.weights_key = self.namespace("weights")
        self.dead_letter_ttl = dead_letter_ttl
        self.beats_key = self.namespace("heartbeats")
        self.dead_key = self.namespace("dead")
        # Waiting for a job to settle (taskhub.builtin.saq.settled): a marker per
        # watched job, and the stream the settling step then adds the job to.
        self.settled_key = self.namespace("settled")
        self.waiting_prefix = self.namespace("waiting:")
        self._outage = OutageLog(f"Redis (queue {name!r})", logger)
        # Every job's steps go through one script call per batch: on the pipelined
        # connection when there is one (a worker's), else on redis-py.
        self._step: ScriptCall = (
            scripts.script(STEP_LUA) if scripts is not None else redis.register_script(STEP_LUA)
        )
        self._moves: list[tuple[str, list[Any], asyncio.Future[Moved]]] = []
        self._takers: list[asyncio.Future[tuple[bytes, bytes] | None]] = []
        self._in_flight = 0  # script calls on the wire
        self._flush_due = False
        self._steps: set[asyncio.Task[None]] = set()
        self._inspect = redis.register_script(SWEEP_LUA)
        self._beat = redis.register_script(BEAT_LUA)
        self._purge = redis.register_script(PURGE_LUA)
        self._due = redis.register_script(SCHEDULE_LUA)
        # Told of each job the sweep recovered: (task, how it was moved). Set by metrics.
        self.on_recovered: Callable[[str, Move], None] | None = None
        # Awaited once for each job this queue made a dead letter, whoever asked (a
        # worker's last failed attempt, the sweep's lost last attempt): the sinks' report.
        self.on_dead: Callable[[Job], Awaitable[None]] | None = None

    def serialize(self, job: Job) -> bytes | str:
        """The bytes of SAQ's ``serialize`` (fields left at their default are left out),
        without its reflection over the dataclass on every call: twice per job."""
        data: dict[str, Any] = {}
        for (name, default), value in zip(JOB_FIELDS, JOB_VALUES(job), strict=True):
            if value is default:
                continue
            try:
                if value == default:
                    continue
            except ValueError:  # as SAQ: a value that cannot be compared is kept
                pass
            data[name] = value
        if not data.get("meta"):
            data.pop("meta", None)
        queue = data.get("queue")
        if queue:
            data["queue"] = queue.name
        return self._dump(data)

    async def version(self) -> tuple[int, ...]:
        if self._version is None:
            try:
                info = await self.redis.info("server")
            except ResponseError:  # fakeredis has no INFO; BRPOPLPUSH works on both
                self._version = (6, 0, 0)
            else:
                self._version = tuple(int(i) for i in str(info["redis_version"]).split("."))
        return self._version

    # ------------------------------------------------------------------ worker side

    async def take(self, timeout: float, *, block: bool = True) -> tuple[Job, bytes] | None:
        """Move the next job to the active list; returns it with its stored bytes.

        Takes ride along with other requests in one script call; only an empty
        queue falls back to blocking (BLMOVE) for up to ``timeout``, unless ``block``
        is False.
        """
        try:
            taken = await self._submit_take()
            if taken is None and block:
                taken = await self._take_blocking(timeout)
        except Exception as exc:
            self._outage.absorb(exc)
            await asyncio.sleep(OUTAGE_BACKOFF)
            return None
        self._outage.succeeded()
        if taken is None:
            return None
        job = self.deserialize(taken[1])
        assert job is not None
        return job, taken[1]

    async def _take_blocking(self, timeout: float) -> tuple[bytes, bytes] | None:
        # redis-py types these timeouts as int, but Redis takes fractions of a second.
        client: Any = self.redis
        if self.fairness == FAIR:
            # Lift a user off the ring when there is one: one idle worker wakes per user,
            # not all of them. The take puts him back at the ring's head first.
            if await self._wait_for(client, self.ring_key, self.waking_key, timeout) is None:
                return None
            return await self._submit_take()
        job_id = await self._wait_for(client, self._queued, self._active, timeout)
        if job_id is None:
            return None
        if job_id == self.wake_token:  # a job waits in prio (see line.py): take it
            await client.lrem(self._active, 1, job_id)
            return await self._submit_take()
        raw = await self.redis.get(job_id)
        return None if raw is None else (job_id, raw)  # gone: the sweep tidies the list

    async def _wait_for(self, client: Any, source: str, target: str, timeout: float) -> Any:
        """Move ``source``'s head to ``target``'s tail, waiting up to ``timeout`` for one."""
        if await self.version() < (6, 2, 0):
            return await client.brpoplpush(source, target, timeout)
        return await client.blmove(source, target, timeout, "LEFT", "RIGHT")

    async def dequeue(self, timeout: float = 0.0, poll_interval: float = 0.0) -> Job | None:
        taken = await self.take(timeout)
        return taken[0] if taken else None

    async def claim(self, job: Job, raw: bytes, worker_id: str, persist: float = 0) -> bool:
        """Start an attempt of a job this worker took; False if it is no longer ours.
        ``persist``: as for ``move``."""
        job.attempts += 1
        job.started = job.touched = now()
        job.worker_id = worker_id
        job.scheduled = 0
        job.status = Status.ACTIVE
        return bool(await self.move(job, Move.CLAIM, Fence.STORED, raw, persist=persist))

    def lease(self, job: Job) -> float:
        """Seconds without a heartbeat before the sweep may take ``job`` from its worker."""
        return float(job.heartbeat or self.heartbeat)

    def run_fence(self, job: Job) -> str:
        return f"{job.worker_id}:{job.attempts}"

    async def beat(self, job_ids: Iterable[str]) -> None:
        ids = list(job_ids)
        if ids:
            await self.skip_if_down(self._beat(keys=[self.beats_key], args=ids))

    async def move(
        self,
        job: Job,
        move: Move,
        fence: Fence,
        expected: bytes | str,
        *,
        score: float = 0,
        stale_ms: int = -1,
        persist: float = 0,
    ) -> Moved:
        """Write ``job`` and move it as ``move`` says, if ``fence`` still holds.

        ``persist``: seconds to keep asking, the very same transition, while Redis is
        unreachable (a timeout may hide a transition that ran: its repeat finds the job
        as it left it and changes nothing); then, or at once without it, the error.
        """
        ttl = self.dead_letter_ttl if move is Move.DEAD else job.ttl
        ttl_ms = ttl * 1000 if ttl > 0 else ttl
        head = f"{fence.value} {move.value} {ttl_ms} {score!r} {stale_ms}"
        args = [head, expected, self.serialize(job)]
        deadline = asyncio.get_running_loop().time() + persist
        while True:
            done: asyncio.Future[Moved] = asyncio.get_running_loop().create_future()
            self._moves.append((job.id, args, done))
            self._start_flush()
            try:
                moved = await done
            except Exception as exc:
                if not is_unavailable(exc) or asyncio.get_running_loop().time() >= deadline:
                    raise
                self._outage.absorb(exc)  # logged once per outage
                await asyncio.sleep(ASK_AGAIN)
                continue
            if persist:
                self._outage.succeeded()
            if move is Move.DEAD and moved is Moved.DONE and self.on_dead is not None:
                await self.on_dead(job)  # once: a repeat of this call is never reported
            return moved

    # ------------------------------------------------------------------ batching

    def _submit_take(self) -> asyncio.Future[tuple[bytes, bytes] | None]:
        taken: asyncio.Future[tuple[bytes, bytes] | None]
        taken = asyncio.get_running_loop().create_future()
        self._takers.append(taken)
        self._start_flush()
        return taken

    def _start_flush(self) -> None:
        if not self._flush_due and self._in_flight < STEPS_IN_FLIGHT:
            self._flush_due = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """Send what was asked meanwhile as script calls, at most two on the wire.

        Requests from every job in flight pile up while a call is on the wire, so
        each round trip settles, claims and takes many jobs. Jobs then tend to move
        as one herd: all wait for Redis, then Redis waits for all. A herd that
        finds nothing on the wire is split in two calls, so that Redis runs one
        half while the worker handles the other: the two halves stay out of step.
        """
        self._flush_due = False
        while self._in_flight < STEPS_IN_FLIGHT and (self._moves or self._takers):
            moves, takers = self._moves, self._takers
            if self._in_flight == 0 and len(moves) + len(takers) > 1:  # both halves non-empty
                m, t = (len(moves) + 1) // 2, len(takers) // 2
                self._moves, self._takers = moves[m:], takers[t:]
                moves, takers = moves[:m], takers[:t]
            else:
                self._moves, self._takers = [], []
            self._in_flight += 1
            task = asyncio.create_task(self._send(moves, takers), name=f"saq-{self.name}-step")
            self._steps.add(task)
            task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._steps.discard(task)
        self._in_flight -= 1
        if not task.cancelled():  # cancelled: the loop is closing, its callers too
            self._flush()

    async def _send(
        self,
        moves: list[tuple[str, list[Any], asyncio.Future[Moved]]],
        takers: list[asyncio.Future[tuple[bytes, bytes] | None]],
    ) -> None:
        keys = [
            self._active,
            self._queued,
            self._incomplete,
            self.beats_key,
            self.dead_key,
            self.settled_key,
        ]
        try:
            pop = "LMOVE" if await self.version() >= (6, 2, 0) else "RPOPLPUSH"
            args: list[Any] = [len(takers), pop, self.waiting_prefix, self.fairness]
            for job_id, job_args, _ in moves:
                keys.append(job_id)
                args.extend(job_args)
            results, taken = await self._step(keys=keys, args=args)
        except BaseException as exc:  # every caller sees the failure, as if alone
            waiting: list[asyncio.Future[Any]] = [done for _, _, done in moves]
            for future in (*waiting, *takers):
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, _, done), result in zip(moves, results, strict=True):
            if done.done():
                continue
            if isinstance(result, bytes):
                done.set_exception(ResponseError(result.decode(errors="replace")))
            else:
                done.set_result(Moved(result))
        pairs = list(zip(taken[::2], taken[1::2], strict=True))
        for index, future in enumerate(takers):
            job = pairs[index] if index < len(pairs) else None
            if not future.done():
                future.set_result(job)
            # A caller that gave up on its take leaves the job to the sweep: taken,
            # never claimed, so it goes back without using an attempt.

    # ------------------------------------------------------------------ upkeep

    async def sweep(self, lock: int = 60, abort: float = 5.0) -> list[str]:
        """Give back jobs whose worker stopped beating; never touch a job that beats."""
        # The lock lapses a little before the next round, so no worker's round is skipped
        # for a lock that is about to expire: recovery stays within heartbeat + interval.
        lock_ms = max(1, int(lock * 900))
        rows = await self.skip_if_down(
            self._inspect(keys=[self._sweep, self._active, self.beats_key], args=[lock_ms])
        )
        swept = []
        for job_id, raw, age in rows or []:
            if raw is None:  # listed but gone (deleted): drop the stale entry
                await self.skip_if_down(self._forget(job_id))
                continue
            job = self.deserialize(raw)
            assert job is not None
            limit_ms = int(self.lease(job) * 1000)
            if age < 0 or age <= limit_ms:
                continue
            if await self.skip_if_down(self._recover(job, raw, limit_ms)):
                swept.append(job_id.decode())
        return swept

    async def _forget(self, job_id: bytes) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.lrem(self._active, 0, job_id)  # type: ignore[arg-type]  # bytes are fine
            pipe.zrem(self._incomplete, job_id)
            pipe.zrem(self.beats_key, job_id)
            await pipe.execute()

    async def _recover(self, job: Job, raw: bytes, limit_ms: int) -> bool:
        """Re-queue (or finish) a job whose worker is gone, if it is still stale."""
        lost = WORKER_LOST.format(limit_ms / 1000)
        attempt = f"attempt {job.attempts} of {job.retries}"
        if job.status == Status.ABORTING:
            job.status, job.completed = Status.ABORTED, now()
            move, outcome = Move.FINISH, "it was being aborted: now aborted"
        elif job.status != Status.ACTIVE:
            move, outcome = Move.FRONT, "dequeued but never started: queued again, no attempt used"
        elif job.retryable:
            job.status, job.error, job.started, job.worker_id = Status.QUEUED, lost, 0, None
            move, outcome = Move.FRONT, f"{attempt} lost: queued again"
        else:
            job.status, job.error, job.completed, job.worker_id = Status.FAILED, lost, now(), None
            move, outcome = Move.DEAD, f"{attempt} was its last: now a dead letter"
        # A dead letter is asked again while Redis is unreachable: if the first call ran and
        # its reply was lost, the repeat finds the job as it left it and reports it (DONE),
        # so the sinks hear of it once; without the repeat, no later sweep would see it.
        persist = self.lease(job) if move is Move.DEAD else 0
        moved = bool(
            await self.move(
                job, move, Fence.STORED, raw, score=now(), stale_ms=limit_ms, persist=persist
            )
        )
        if moved:
            if self.on_recovered is not None:
                self.on_recovered(job.function, move)
            level = logging.ERROR if move is Move.DEAD else logging.WARNING
            logger.log(level, "job %s (task %s): %s; %s", job.key, job.function, lost, outcome)
        return moved

    async def schedule(self, lock: int = 1) -> list[str]:
        keys = [self._incomplete, self._queued]
        due = await self.skip_if_down(self._due(keys=keys, args=[self.fairness]))
        return [job_id.decode() for job_id in due or []]

    async def write_worker_info(self, worker_id: str, info: Any, ttl: int) -> None:
        await self.skip_if_down(super().write_worker_info(worker_id, info, ttl))

    async def jobs(self, job_keys: Iterable[str]) -> list[Job | None]:
        """SAQ's abort upkeep reads running jobs through this: skipped in an outage too."""
        return await self.skip_if_down(super().jobs(job_keys)) or []

    async def skip_if_down(self, call: Awaitable[T]) -> T | None:
        """Upkeep during an outage: note it once and skip this round."""
        try:
            result = await call
        except Exception as exc:
            self._outage.absorb(exc)
            return None
        self._outage.succeeded()
        return result

    async def depth(self) -> dict[str, int]:
        """Jobs by state, in one round trip: waiting in line, running, not yet finished
        (waiting, scheduled for a retry, or running) and dead letters."""
        async with self.redis.pipeline(transaction=False) as pipe:
            self.count_queued(pipe)
            pipe.llen(self._active)
            pipe.zcard(self._incomplete)
            pipe.zcard(self.dead_key)
            listed, head, prio, lined, *counts = await pipe.execute()
        queued = self.queued_from(listed, head, prio, lined)
        names = ("queued", "active", "incomplete", "dead")
        return dict(zip(names, [queued, *map(int, counts)], strict=True))

    def count_queued(self, pipe: Any) -> None:
        """Queue the reads whose sum is the jobs waiting in line (see line.py); read
        them with ``queued_from``."""
        pipe.llen(self._queued)
        pipe.lindex(self._queued, 0)  # a wake token is pushed into an empty list only
        pipe.zcard(self.prio_key)
        pipe.get(self.lined_key)

    def queued_from(self, listed: int, head: bytes | None, prio: int, lined: bytes | None) -> int:
        """Jobs waiting in line, from ``count_queued``'s reads: not the wake token."""
        return int(listed) - (head == self.wake_token) + int(prio) + int(lined or 0)

    async def top_users(self, count: int) -> list[tuple[str, int]]:
        """The users holding the most jobs in their lines (fairness user), most first."""
        ranked = await self.redis.zrevrange(self.backlog_key, 0, count - 1, withscores=True)
        return [(user.decode(), int(n)) for user, n in ranked if n > 0]

    async def weight(self, user_id: str) -> int:
        return int(await self.redis.hget(self.weights_key, user_id) or 1)  # type: ignore[misc]

    async def set_weights(self, weights: dict[str, int]) -> None:
        """Takes per turn for each user (1 removes the entry: the default)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            for user, weight in weights.items():
                if weight == 1:
                    pipe.hdel(self.weights_key, user)
                else:
                    pipe.hset(self.weights_key, user, str(weight))
            await pipe.execute()

    # ------------------------------------------------------------------ dead letters

    async def dead_entries(self, limit: int | None = None) -> list[tuple[Job, bytes]]:
        """Dead letters, oldest first; index entries whose job expired are dropped."""
        stop = -1 if limit is None else limit - 1
        ids = await self.redis.zrange(self.dead_key, 0, stop)
        if not ids:
            return []
        raws = await self.redis.mget(ids)
        expired = [job_id for job_id, raw in zip(ids, raws, strict=True) if raw is None]
        if expired:
            await self.redis.zrem(self.dead_key, *expired)
        return [(self.deserialize(raw), raw) for raw in raws if raw is not None]  # type: ignore[misc]

    async def purge_dead(self) -> int:
        return int(await self._purge(keys=[self.dead_key]))
