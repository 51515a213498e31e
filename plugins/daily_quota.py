"""Example limiter plugin: ``daily_quota``, N tasks per user per UTC calendar day.

Copy this file to start your own strategy. Enable it by editing only the
``limiter:`` block of your config:

    limiter:
      type: daily_quota
      quota: 100

A limiter is a Lua table with ``check`` (decide, write nothing), ``commit``
(charge an admitted request) and optionally ``refuse`` (what a refusal costs).
The kernel splices it into the one admission script, so the decision and the
enqueue stay a single atomic round trip. ``now`` is the Redis clock in ms.
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import Field

from taskhub import Limiter, Options, RatePolicy, hookimpl

DAY_MS = 86_400_000

LUA = """
local M = {}
-- p = {quota, ms per day}; the hash holds the UTC day number and that day's count
function M.check(ks, now, cost, p)
  local quota, day_ms = p[1], p[2]
  local day = math.floor(now / day_ms)
  local st = redis.call('HMGET', ks[1], 'day', 'count')
  local used = 0
  if tonumber(st[1]) == day then used = tonumber(st[2]) or 0 end
  local d = {limit = quota, day = day, used = used + cost, retry = 0}
  d.allowed = d.used <= quota
  d.reset = (day + 1) * day_ms - now
  if d.allowed then
    d.remaining = quota - d.used
  else
    d.remaining = math.max(quota - used, 0)
    d.retry = d.reset
  end
  return d
end
function M.commit(ks, now, cost, p, d)
  redis.call('HSET', ks[1], 'day', d.day, 'count', d.used)
  redis.call('PEXPIREAT', ks[1], now + d.reset)
end
return M
"""


class DailyQuota(Limiter):
    """``quota`` tasks per user per UTC day; refusals cost nothing."""

    name = "daily_quota"
    lua = LUA

    class Config(Options):
        quota: int = Field(100, ge=1, description="tasks per user per UTC day")

    config: Config

    def params(self) -> list[float]:
        return [self.config.quota, DAY_MS]

    def policy(self) -> RatePolicy:
        return RatePolicy(limit=self.config.quota, window=DAY_MS / 1000)

    def keys(self, prefix: str, subject: str) -> list[str]:
        return [f"{prefix}:daily:{subject}"]


@hookimpl
def register_limiters(register: Callable[[type[Limiter]], None]) -> None:
    register(DailyQuota)
