"""Admitted and refused submissions per second, and the keys refused most, across every server.

The dashboard must show the same numbers whichever server it asks, so the counts
live in Redis; but a Redis write per request would cost the request path a round
trip. Instead each server process counts in memory (an increment, and on a
refusal one bounded dict update) and a background task adds those counts to
Redis once a second, in one pipeline:

- ``<prefix>:traffic:s:<unix second>``, a hash of ``admitted`` and ``refused``
  (every process adds to the same second), kept ``SECOND_TTL`` seconds;
- ``<prefix>:traffic:refused:<unix minute>``, a sorted set of ``rule:key`` scored
  by refusals (``ZINCRBY``), kept ``MINUTE_TTL`` seconds.

Reading sums the last complete seconds into rates and merges this minute's and
the last minute's sorted sets into the top refused keys. On a Redis Cluster the
prefix is a hash tag (:func:`traffic_prefix`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import with_config
from redis.asyncio import Redis
from typing_extensions import TypedDict

from taskhub.limits.admission import Decision
from taskhub.limits.policy import Outcome, RequestContext, Rule
from taskhub.store.clients import redis_call
from taskhub.store.outage import OutageLog

logger = logging.getLogger(__name__)

FLUSH_INTERVAL = 1.0  # seconds between writes to Redis
SECOND_TTL = 120  # a per-second hash outlives the longest series read
MINUTE_TTL = 180  # a per-minute set is read until the minute after it has ended
HISTORY = 60  # seconds of per-second counts a read returns
RATE_WINDOW = 10  # seconds the rates average over
MAX_KEYS = 1_000  # distinct refused keys one process keeps between two flushes
MAX_KEY_LENGTH = 200  # characters of a refused key kept (header values can be long)
TOP_KEYS = 10


def traffic_prefix(key_prefix: str, cluster: bool) -> str:
    """``key_prefix``, as a hash tag on a Redis Cluster: every traffic key in one slot, so
    each flush and each read is one pipeline to one node."""
    return f"{{{key_prefix}}}" if cluster else key_prefix


@with_config(extra="forbid")
class RefusedKeyJson(TypedDict):
    rule: str
    key: str
    refusals: int


@with_config(extra="forbid")
class SeriesJson(TypedDict):
    admitted: list[int]
    refused: list[int]


@with_config(extra="forbid")
class TrafficJson(TypedDict):
    """Admitted and refused submissions per second, and the keys refused most."""

    until: int
    window_s: int
    admitted_per_s: float
    refused_per_s: float
    series: SeriesJson
    top_refused: list[RefusedKeyJson]


@dataclass(frozen=True, slots=True)
class RefusedKey:
    rule: str
    key: str
    refusals: int

    def to_json(self) -> RefusedKeyJson:
        return {"rule": self.rule, "key": self.key, "refusals": self.refusals}


def refused_key(member: str, score: float) -> RefusedKey:
    """A ranked ``rule:key`` member of the refusals sorted set."""
    rule, _, key = member.partition(":")
    return RefusedKey(rule, key, int(score))


@dataclass(frozen=True, slots=True)
class TrafficView:
    """What every server counted: rates over ``window`` seconds, a per-second series
    (oldest first) ending at ``until`` (exclusive), and the most refused keys."""

    until: int
    window: int
    admitted_per_s: float
    refused_per_s: float
    admitted: list[int]
    refused: list[int]
    top_refused: list[RefusedKey]

    def to_json(self) -> TrafficJson:
        return {
            "until": self.until,
            "window_s": self.window,
            "admitted_per_s": self.admitted_per_s,
            "refused_per_s": self.refused_per_s,
            "series": {"admitted": self.admitted, "refused": self.refused},
            "top_refused": [key.to_json() for key in self.top_refused],
        }


class TrafficRecorder:
    """Counts this process's decisions in memory; :meth:`flush` adds them to Redis."""

    def __init__(
        self,
        redis: Redis,
        key_prefix: str,
        rules: Sequence[Rule],
        *,
        max_keys: int = MAX_KEYS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis
        self.key_prefix = key_prefix
        self.max_keys = max_keys
        self.clock = clock
        self.admitted = 0
        self.refused = 0
        self.keys: dict[str, int] = {}
        self._rules = {rule.name: rule for rule in rules}
        self._task: asyncio.Task[None] | None = None
        self._outage = OutageLog("Redis (dashboard traffic)", logger)

    # ----------------------------------------------------------------- request path

    def decided(self, decision: Decision, context: RequestContext) -> None:
        """Count one admission decision: no I/O, no formatting unless it is a refusal."""
        outcome = decision.outcome
        if outcome is Outcome.ADMITTED:
            self.admitted += 1
        elif outcome is Outcome.REFUSED:
            self.refused += 1
            deciding = decision.deciding
            rule = self._rules.get(deciding.name) if deciding is not None else None
            if rule is not None:
                self._count_key(f"{rule.name}:{rule.subject(context)[:MAX_KEY_LENGTH]}", 1)

    def _count_key(self, key: str, refusals: int) -> None:
        keys = self.keys
        if key in keys:
            keys[key] += refusals
        elif len(keys) < self.max_keys:  # past the bound only the total counts this second
            keys[key] = refusals

    # ----------------------------------------------------------------- flushing

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="taskhub-traffic")

    async def stop(self) -> None:
        """Stop flushing, then write what is still counted."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._flush_logged()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            await self._flush_logged()

    async def _flush_logged(self) -> None:
        try:
            await self.flush()
        except Exception:
            logger.exception("could not write the dashboard's traffic counts")

    async def flush(self) -> None:
        """Add the counts since the last flush to Redis. While Redis is unreachable they
        stay counted here (the keys within the same bound) and go with the next flush."""
        admitted, refused, keys = self.admitted, self.refused, self.keys
        if not (admitted or refused):
            return
        self.admitted = self.refused = 0
        self.keys = {}
        now = int(self.clock())
        second, minute = self.second_key(now), self.minute_key(now // 60)
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.hincrby(second, "admitted", admitted)
                pipe.hincrby(second, "refused", refused)
                pipe.expire(second, SECOND_TTL)
                for key, count in keys.items():
                    pipe.zincrby(minute, count, key)
                if keys:
                    pipe.expire(minute, MINUTE_TTL)
                await pipe.execute()
        except Exception as exc:
            self._restore(admitted, refused, keys)
            self._outage.absorb(exc)  # logs an outage once; re-raises anything else
            return
        self._outage.succeeded()

    def _restore(self, admitted: int, refused: int, keys: dict[str, int]) -> None:
        self.admitted += admitted
        self.refused += refused
        for key, count in keys.items():
            self._count_key(key, count)

    # ----------------------------------------------------------------- reading

    def second_key(self, second: int) -> str:
        return f"{self.key_prefix}:traffic:s:{second}"

    def minute_key(self, minute: int) -> str:
        return f"{self.key_prefix}:traffic:refused:{minute}"

    async def _counts(self, seconds: range, minute: int, top: int) -> list[Any]:
        # A whole call: a cluster client's pipeline connects as it is entered.
        async with self.redis.pipeline(transaction=False) as pipe:
            for second in seconds:
                pipe.hmget(self.second_key(second), ["admitted", "refused"])
            for m in (minute - 1, minute):
                pipe.zrevrange(self.minute_key(m), 0, top * 5 - 1, withscores=True)
            return list(await pipe.execute())

    async def read(
        self, *, history: int = HISTORY, window: int = RATE_WINDOW, top: int = TOP_KEYS
    ) -> TrafficView:
        """Every server's counts for the last ``history`` complete seconds, and the keys
        refused most this minute and the last (each minute's ``top * 5`` highest merged)."""
        now = int(self.clock())
        seconds = range(now - history, now)  # the current second is still being written
        replies = await redis_call(self._counts(seconds, now // 60, top))
        admitted = [int(a or 0) for a, _ in replies[:history]]
        refused = [int(r or 0) for _, r in replies[:history]]
        merged: dict[str, float] = {}
        for ranked in replies[history:]:
            for member, score in ranked:
                name = member.decode(errors="replace")
                merged[name] = merged.get(name, 0) + score
        ranked_keys = sorted(merged.items(), key=lambda item: (-item[1], item[0]))[:top]
        span = max(min(window, history), 1)
        return TrafficView(
            until=now,
            window=span,
            admitted_per_s=sum(admitted[-span:]) / span,
            refused_per_s=sum(refused[-span:]) / span,
            admitted=admitted,
            refused=refused,
            top_refused=[refused_key(name, score) for name, score in ranked_keys],
        )
