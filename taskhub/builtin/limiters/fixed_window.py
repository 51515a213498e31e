"""``fixed_window``: rate-limiter-flexible's RateLimiterRedis, decision for decision.

A window of ``duration`` seconds opens at a key's first request and admits
``points``. Like RateLimiterRedis it counts refused requests too. When a
request first goes over, a ``block_duration`` > 0 replaces the rest of the
window with a block of that length; the next request after it opens a fresh
window. So a 1 s block *shortens* the lockout: a fast client gets ``points``
requests, waits 1 s, and gets ``points`` more. This is the seed system's
behaviour, kept for users migrating from it; ``token_bucket`` is the default.
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import Field

from taskhub import Limiter, Options, RatePolicy, hookimpl

LUA = """
local M = {}
-- p = {points, duration ms, block ms}; the hash holds count and ends (ms)
function M.check(ks, now, cost, p)
  local points, duration = p[1], p[2]
  local st = redis.call('HMGET', ks[1], 'count', 'ends')
  local count, ends = tonumber(st[1]), tonumber(st[2])
  if count == nil or ends == nil or now >= ends then
    count, ends = 0, now + duration
  end
  local consumed = count + cost
  local d = {limit = points, consumed = consumed, ends = ends, retry = 0}
  d.allowed = consumed <= points
  d.remaining = math.max(points - consumed, 0)
  d.reset = ends - now
  if not d.allowed then d.retry = ends - now end
  return d
end
function M.commit(ks, now, cost, p, d)
  redis.call('HSET', ks[1], 'count', d.consumed, 'ends', d.ends)
  redis.call('PEXPIREAT', ks[1], d.ends)
end
function M.refuse(ks, now, cost, p, d)
  local points, block = p[1], p[3]
  local ends = d.ends
  if block > 0 and d.consumed <= points + cost then ends = now + block end
  redis.call('HSET', ks[1], 'count', d.consumed, 'ends', ends)
  redis.call('PEXPIREAT', ks[1], ends)
  d.ends, d.reset, d.retry = ends, ends - now, ends - now
end
return M
"""


class FixedWindow(Limiter):
    """``points`` per ``duration`` seconds from a key's first request; ``block_duration``."""

    name = "fixed_window"
    lua = LUA

    class Config(Options):
        points: int = Field(20, ge=1, le=1_000_000_000, description="requests admitted per window")
        duration: int = Field(
            60,
            ge=1,
            le=31_536_000,
            description="window length in seconds, from a key's first request",
        )
        block_duration: int = Field(
            1,
            ge=0,
            le=86_400,
            description="seconds that replace the rest of the window when it first goes over; "
            "0: none",
        )

    config: Config

    def params(self) -> list[float]:
        c = self.config
        return [c.points, c.duration * 1000, c.block_duration * 1000]

    def policy(self) -> RatePolicy:
        return RatePolicy(limit=self.config.points, window=self.config.duration)

    def keys(self, prefix: str, subject: str) -> list[str]:
        return [f"{prefix}:fw:{subject}"]


@hookimpl
def register_limiters(register: Callable[[type[Limiter]], None]) -> None:
    register(FixedWindow)
