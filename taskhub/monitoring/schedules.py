"""Each schedule's next run and last tick, for ``taskhub status`` and the dashboard.

The next run comes from the config and the clock; the last tick from the hash
the workers' scheduler writes when it queues one
(:func:`taskhub.limits.schedules.last_ticks_key`).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import cast

import orjson
from pydantic import with_config
from redis.asyncio import Redis
from typing_extensions import TypedDict

from taskhub.config.schedules import ScheduleSettings
from taskhub.jobs import iso
from taskhub.limits.schedules import last_ticks_key
from taskhub.store.clients import redis_call


# The one definition of a schedule's JSON: in ``taskhub status --json`` and the
# dashboard's summary, whose OpenAPI schema is made from it.
@with_config(extra="forbid")
class ScheduleJson(TypedDict):
    name: str
    task: str
    user_id: str
    every: str  # the cron expression, or "every N s"
    tz: str
    next_run: str | None
    last_tick: str | None  # the last tick a worker queued; null: none recorded
    last_job_id: str | None


class ScheduleBoard:
    """Reads the schedules' last ticks (one HGETALL) and works out their next runs."""

    def __init__(
        self,
        redis: Redis,
        schedules: Sequence[ScheduleSettings],
        key_prefix: str,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis
        self.schedules = tuple(schedules)
        self.key = last_ticks_key(key_prefix)
        self.clock = clock

    async def read(self) -> list[ScheduleJson]:
        if not self.schedules:
            return []
        read = cast(Awaitable[dict[bytes, bytes]], self.redis.hgetall(self.key))
        recorded = await redis_call(read)
        return schedules_json(self.schedules, recorded, self.clock())


def schedules_json(
    schedules: Sequence[ScheduleSettings], recorded: dict[bytes, bytes], now: float
) -> list[ScheduleJson]:
    rows: list[ScheduleJson] = []
    for schedule in schedules:
        raw = recorded.get(schedule.name.encode())
        last = orjson.loads(raw) if raw else {}
        rows.append(
            {
                "name": schedule.name,
                "task": schedule.task,
                "user_id": schedule.user_id,
                "every": schedule.every,
                "tz": schedule.tz,
                "next_run": moment(schedule.next_tick(now)),
                "last_tick": moment(last.get("tick")),
                "last_job_id": last.get("job_id"),
            }
        )
    return rows


def moment(seconds: float | None) -> str | None:
    return None if seconds is None else iso(datetime.fromtimestamp(seconds, UTC))
