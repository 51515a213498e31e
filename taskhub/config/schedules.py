"""``schedules:``: tasks submitted on a cron expression or a fixed interval, and their ticks.

A tick is a moment a schedule fires, in whole seconds since the epoch. Every
process computes the same ticks from the config alone (an interval's ticks are
the multiples of it since the epoch, a cron expression's are croniter's), so
the processes need to agree only on which of them submitted a tick, not on when
ticks fall. Cron expressions are parsed by croniter (SAQ's own cron dependency):
five fields or an alias such as ``@daily``, in the schedule's time zone.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, tzinfo
from functools import cached_property
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
from croniter import croniter
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from taskhub.jobs import UserId

SCHEDULE_NAME = r"^[A-Za-z0-9_.-]{1,64}$"
MAX_INTERVAL = 31 * 86_400
MAX_LATENESS = 7 * 86_400
CRON_ALIASES = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")


class ScheduleSettings(BaseModel):
    """One schedule: what to submit (task, payload, user) and when (cron or interval)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        pattern=SCHEDULE_NAME,
        description="unique among schedules; in job ids (schedule.<name>.<tick>), logs and "
        "Redis keys: letters, digits, _ . - (64 at most)",
    )
    task: str = Field(description="the task submitted, one of tasks")
    cron: str | None = Field(
        None,
        max_length=200,
        description="a cron expression: 5 fields (minute hour day month weekday) or "
        f"{', '.join(CRON_ALIASES)}; in tz. Exactly one of cron and interval",
    )
    interval: int | None = Field(
        None,
        ge=1,
        le=MAX_INTERVAL,
        description="seconds between ticks, at the multiples of it since 1970-01-01 UTC "
        "(3600: on the hour). Exactly one of cron and interval",
    )
    tz: str = Field(
        "UTC", max_length=64, description="the time zone of cron, an IANA name (Europe/Paris)"
    )
    user_id: UserId = Field(
        description="the user the jobs are submitted as (their user_id, their shard)"
    )
    payload: dict[str, Any] | None = Field(
        None,
        description="the jobs' payload, a mapping, checked against the task's Payload model "
        "as a POST /task's would be; null: none",
    )
    max_lateness: int = Field(
        300,
        ge=1,
        le=MAX_LATENESS,
        description="seconds after its time a tick may still be submitted (when no worker ran "
        "at the time); older ticks are skipped, and only the latest is ever submitted",
    )

    @field_validator("payload")
    @classmethod
    def _storable(cls, payload: dict[str, Any] | None) -> dict[str, Any] | None:
        try:
            orjson.dumps(payload)
        except orjson.JSONEncodeError as exc:
            raise ValueError(f"cannot be stored as JSON: {exc}") from None
        return payload

    @field_validator("tz")
    @classmethod
    def _known_zone(cls, tz: str) -> str:
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                "unknown time zone; use an IANA name such as UTC or Europe/Paris"
            ) from None
        return tz

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, cron: str | None) -> str | None:
        if cron is None:
            return None
        cron = cron.strip()
        fields = cron.split()
        aliased = len(fields) == 1 and cron.lower() in CRON_ALIASES
        if not aliased and (len(fields) != 5 or not croniter.is_valid(cron)):
            raise ValueError(
                "not a cron expression: use 5 fields (minute hour day month weekday, "
                f"e.g. '*/15 * * * *') or one of {', '.join(CRON_ALIASES)}"
            )
        return cron

    @model_validator(mode="after")
    def _one_cadence(self) -> ScheduleSettings:
        if (self.cron is None) == (self.interval is None):
            given = "both" if self.cron is not None else "neither"
            raise ValueError(
                f"give exactly one of cron and interval ({given} given): "
                "cron: '0 3 * * *' or interval: 60"
            )
        return self

    @cached_property
    def zone(self) -> tzinfo:
        return UTC if self.tz == "UTC" else ZoneInfo(self.tz)

    @property
    def _interval(self) -> int:
        assert self.interval is not None, "a schedule has a cron expression or an interval"
        return self.interval

    @property
    def every(self) -> str:
        """The cadence as people write it: the cron expression, or ``every 60 s``."""
        return self.cron if self.cron is not None else f"every {self.interval} s"

    def latest_tick(self, now: float) -> int:
        """The last tick at or before ``now`` (seconds since the epoch)."""
        if self.cron is None:
            return math.floor(now) // self._interval * self._interval
        start = datetime.fromtimestamp(math.floor(now) + 1, self.zone)
        return int(croniter(self.cron, start).get_prev(float))

    def next_tick(self, now: float) -> int:
        """The first tick after ``now``."""
        if self.cron is None:
            return (math.floor(now) // self._interval + 1) * self._interval
        start = datetime.fromtimestamp(math.floor(now), self.zone)
        return int(croniter(self.cron, start).get_next(float))

    def due(self, now: float) -> int | None:
        """The tick to submit at ``now``: the latest, unless it is over ``max_lateness`` late."""
        tick = self.latest_tick(now)
        return tick if now - tick <= self.max_lateness else None

    def marker_ttl(self, tick: int) -> int:
        """Seconds a tick's marker must outlive it: as long as some process may still
        call it due (until the next tick or max_lateness, whichever is sooner), plus
        two minutes for clocks that disagree."""
        return min(self.next_tick(tick) - tick, self.max_lateness) + 120
