"""A schedule's tick queued exactly once, whichever process and however many try.

The tick's job has an id made of the schedule's name and the tick
(``schedule.<name>.<YYYYmmddTHHMMSSZ>``), and one Lua script checks a marker
for the tick, pushes the job through the queue's own enqueue code (the
queue's ``prepare`` and ``enqueue_lua``, as admission does) and sets the
marker, all at once: a process that dies between two steps cannot lose the
tick or queue it twice, since there are no two steps. The marker is kept as
long as any process may still call the tick due
(:meth:`~taskhub.config.schedules.ScheduleSettings.marker_ttl`), whatever the
job's own ``ttl``, and lives in the job's hash slot, beside it, so the script
stays in one slot on a cluster.

No rate-limit rule applies: a schedule is the operator's, not a client's.
``max_depth`` does: a full queue refuses a tick (and the scheduler tries again
while the tick is still due).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson
from redis.asyncio import Redis

from taskhub.components import QueueBackend
from taskhub.config.schedules import ScheduleSettings
from taskhub.jobs import TaskSpec
from taskhub.limits.policy import Outcome, build_script
from taskhub.store.outage import OutageLog
from taskhub.store.sharding import Shards

logger = logging.getLogger(__name__)
# Tries to record a queued tick for display (a cluster client may find its connection
# dropped once).
RECORD_ATTEMPTS = 2

# The last tick shown by ``taskhub status``: written by whoever sees a tick done
# (queued now, or by another process), never over a later one. KEYS: the hash;
# ARGV: the schedule's name, the tick, the entry (JSON with its "tick").
RECORD_LUA = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old and tonumber(cjson.decode(old)['tick']) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
"""

# With no rules, KEYS and ARGV are the queue's, each followed by one of ours: the
# marker key, and its time to live in ms.
SCHEDULE_BODY = f"""
local marker = table.remove(qk)
local marker_ttl = table.remove(qa)
if redis.call('EXISTS', marker) == 1 or Q.exists(qk, qa) then
  return {{{Outcome.DUPLICATE:d}, now}}
end
if max_depth > 0 and Q.depth(qk, qa) >= max_depth then
  return {{{Outcome.FULL:d}, now}}
end
Q.push(qk, qa)
redis.call('SET', marker, job, 'PX', marker_ttl)
return {{{Outcome.ADMITTED:d}, now}}
"""


def tick_job_id(name: str, tick: int) -> str:
    """The id of a tick's job, the same in every process: ``schedule.<name>.<UTC time>``."""
    return f"schedule.{name}.{datetime.fromtimestamp(tick, UTC):%Y%m%dT%H%M%SZ}"


def last_ticks_key(key_prefix: str) -> str:
    """A hash, schedule name -> the last tick queued (JSON), for ``taskhub status``."""
    return f"{key_prefix}:schedules:last"


class TickSubmitter:
    """Queues schedules' ticks on ``queue``, each at most once across processes."""

    def __init__(
        self,
        redis: Redis,
        queue: QueueBackend,
        tasks: Mapping[str, TaskSpec],
        shards: Shards,
        key_prefix: str,
    ) -> None:
        self.redis = redis
        self.queue = queue
        self.tasks = tasks
        self.shards = shards
        self.key_prefix = key_prefix
        self._script = redis.register_script(build_script((), queue, body=SCHEDULE_BODY))
        self._record_script = redis.register_script(RECORD_LUA)
        self._outage = OutageLog("Redis (schedules)", logger)

    def marker_key(self, name: str, tick: int, shard: int) -> str:
        """Beside the tick's job: in its shard's slot on a cluster."""
        return f"{self.shards.key_prefix(self.key_prefix, shard)}:schedule:{name}:{tick}"

    async def submit(self, schedule: ScheduleSettings, tick: int) -> Outcome:
        """ADMITTED (queued now), DUPLICATE (some process queued it before) or FULL.

        Raises BackendUnavailable when Redis cannot be reached.
        """
        spec = self.tasks[schedule.task]
        job = self.queue.prepare(
            spec,
            schedule.user_id,
            schedule.payload,
            tick_job_id(schedule.name, tick),
            priority=spec.priority,
        )
        keys = [*job.keys, self.marker_key(schedule.name, tick, job.shard)]
        args: list[Any] = ["", "0", str(self.queue.max_depth), job.job_id, *job.args]
        args.append(str(schedule.marker_ttl(tick) * 1000))
        reply = await self._outage.call(self._script(keys=keys, args=args))
        outcome = Outcome(int(reply[0]))
        if outcome is Outcome.ADMITTED:
            logger.info("schedule %s: queued %s", schedule.name, job.job_id)
        if outcome is not Outcome.FULL:
            # A duplicate records it too: the process that queued it may have lost its
            # reply (then it tries again and finds it done) or died before recording.
            await self._record(schedule.name, tick, job.job_id)
        return outcome

    async def _record(self, name: str, tick: int, job_id: str) -> None:
        """What ``taskhub status`` shows as the last tick: informative, so best effort."""
        entry = orjson.dumps({"tick": tick, "job_id": job_id, "queued_at": time.time()}).decode()
        key = last_ticks_key(self.key_prefix)
        for attempt in range(RECORD_ATTEMPTS):  # a dropped connection is worth one more try
            try:
                await self._record_script(keys=[key], args=[name, tick, entry])
                return
            except Exception as exc:  # the tick is queued; only the display misses it
                if attempt + 1 == RECORD_ATTEMPTS:
                    logger.warning(
                        "schedule %s: tick %s queued, but not recorded: %s", name, tick, exc
                    )
