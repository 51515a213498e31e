"""Pure-Python reference models of the limiter strategies, driven by a simulated clock.

They are written from the specifications, not from the Lua: the token bucket from
ARCHITECTURE.md, the fixed window from rate-limiter-flexible 11.4's RateLimiterRedis
(``SET 0 EX duration NX``, ``INCRBY``, ``PTTL``, then ``SET consumed PX block`` the
first time a window goes over), the sliding window from its definition (the weighted
two-window estimate; reset and retry found by searching the clock, not by the Lua's
closed forms), GCRA from redis-cell's ``RateLimiter::rate_limit``. Arithmetic follows
the same IEEE doubles as Lua.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Expected:
    allowed: bool
    remaining: int
    reset_ms: int
    retry_ms: int


class TokenBucketModel:
    def __init__(self, capacity: int, refill: float, period: float, block: float) -> None:
        self.capacity = capacity
        self.rate = refill / (period * 1000)
        self.block_ms = block * 1000
        self.tokens: float | None = None
        self.ts = 0
        self.blocked = 0.0

    def request(self, now: int, cost: int = 1) -> Expected:
        if self.tokens is None:
            tokens = float(self.capacity)
            self.ts = now
        elif now > self.ts:
            tokens = min(self.capacity, self.tokens + (now - self.ts) * self.rate)
        else:
            tokens = self.tokens
        if self.blocked <= now and tokens >= cost:
            left = tokens - cost
            self.tokens, self.ts = left, now
            reset = math.ceil((self.capacity - left) / self.rate)
            return Expected(True, math.floor(left), reset, 0)
        retry = math.ceil((cost - tokens) / self.rate) if tokens < cost else 0
        retry = max(retry, self.blocked - now)
        if self.block_ms > 0 and self.blocked <= now:
            self.blocked = now + self.block_ms
            retry = max(retry, self.block_ms)
        reset = math.ceil((self.capacity - tokens) / self.rate)
        return Expected(False, math.floor(tokens), reset, int(retry))


class RateLimiterRedisModel:
    """rate-limiter-flexible's RateLimiterRedis.consume(), key by key."""

    def __init__(self, points: int, duration: int, block_duration: int) -> None:
        self.points = points
        self.duration_ms = duration * 1000
        self.block_ms = block_duration * 1000
        self.value: int | None = None
        self.expires_at = 0

    def request(self, now: int, cost: int = 1) -> Expected:
        if self.value is not None and now >= self.expires_at:
            self.value = None  # the key expired
        if self.value is None:  # SET key 0 EX duration NX
            self.value, self.expires_at = 0, now + self.duration_ms
        self.value += cost  # INCRBY
        consumed, ttl = self.value, self.expires_at - now  # PTTL
        if consumed <= self.points:
            return Expected(True, self.points - consumed, ttl, 0)
        if self.block_ms > 0 and consumed <= self.points + cost:  # first time over: block
            self.expires_at = now + self.block_ms  # SET key consumed PX block
            return Expected(False, 0, self.block_ms, self.block_ms)
        return Expected(False, 0, ttl, ttl)


class SlidingWindowModel:
    """The weighted two-window counter: previous x (1 - elapsed fraction) + current."""

    def __init__(self, limit: int, period: float, block: float) -> None:
        self.limit = limit
        self.period_ms = round(period * 1000)
        self.block_ms = round(block * 1000)
        self.win: int | None = None  # start of the window the counts belong to
        self.cur = 0
        self.prev = 0
        self.blocked = 0

    def _counts(self, t: int) -> tuple[int, int, int]:
        """(window start, its count, the previous window's count) as seen at ``t``."""
        w = t - t % self.period_ms
        if self.win is not None and self.win > w:  # the clock stepped back: stay put
            w = self.win
        if self.win == w:
            return w, self.cur, self.prev
        if self.win == w - self.period_ms:
            return w, 0, self.cur
        return w, 0, 0

    def _estimate(self, t: int) -> float:
        w, cur, prev = self._counts(t)
        return prev * (1 - max(t - w, 0) / self.period_ms) + cur

    def _first(self, now: int, ok: Callable[[int], bool]) -> int:
        """The least whole ms t >= now with ok(t), given ok holds two periods on (bisection)."""
        low, high = now, self._counts(now)[0] + 2 * self.period_ms
        assert ok(high)
        while low < high:
            mid = (low + high) // 2
            if ok(mid):
                high = mid
            else:
                low = mid + 1
        return low

    def request(self, now: int, cost: int = 1) -> Expected:
        estimate = self._estimate(now)
        if self.blocked <= now and estimate + cost <= self.limit:
            w, cur, prev = self._counts(now)
            self.win, self.cur, self.prev = w, cur + cost, prev
            reset = self._first(now, lambda t: self._estimate(t) == 0) - now
            return Expected(True, math.floor(self.limit - (estimate + cost)), reset, 0)
        reset = self._first(now, lambda t: self._estimate(t) == 0) - now
        if cost > self.limit:
            retry = -1  # never
        else:
            fits = self._first(now, lambda t: self._estimate(t) + cost <= self.limit)
            retry = max(fits, self.blocked) - now
        if self.block_ms > 0 and self.blocked <= now:
            self.blocked = now + self.block_ms
            if retry >= 0:
                retry = max(retry, self.block_ms)
        return Expected(False, max(0, math.floor(self.limit - estimate)), reset, retry)


class GcraModel:
    """redis-cell's CL.THROTTLE (``RateLimiter::rate_limit``), in ms instead of ns."""

    def __init__(self, max_burst: int, rate: int, period: float) -> None:
        self.emission_interval = period * 1000 / rate
        self.delay_variation_tolerance = self.emission_interval * (max_burst + 1)
        self.limit = max_burst + 1
        self.tat: float | None = None  # the key; it expires at the TAT

    def request(self, now: int, cost: int = 1) -> Expected:
        ei, dvt = self.emission_interval, self.delay_variation_tolerance
        tat = now if self.tat is None or self.tat < now else self.tat
        increment = ei * cost
        new_tat = tat + increment
        allow_at = new_tat - dvt
        diff = now - allow_at
        if diff < 0:
            limited, ttl = True, tat - now
            retry = math.ceil(-diff) if increment <= dvt else -1
        else:
            limited, ttl, retry = False, new_tat - now, 0
            self.tat = new_tat
        remaining = 0
        following = dvt - ttl
        if following > -ei:
            remaining = int(following / ei)  # redis-cell's `as i64`: truncation
        return Expected(not limited, remaining, math.ceil(ttl), retry)
