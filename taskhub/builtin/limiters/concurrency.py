"""``concurrency``: at most ``limit`` jobs of a key admitted and not yet finished.

Each admitted job takes a slot: its id in a sorted set per key, scored with a
lease deadline. The queue frees the slot in the same script that finishes the
job (complete, dead letter, aborted, or swept for good), so a slot is never
freed while the job can still run. ``lease`` is only a safety net: a slot whose
job was lost without finishing (its record deleted by hand, say) frees itself
after that long. A job holds one slot whatever its cost; a check at cost 0 (an
idempotent replay, ``taskhub limits show``) takes none and reports the slots free.

A refusal cannot say when a slot frees (that depends on running jobs), so
Retry-After is ``retry_after`` seconds, and the deny cache never answers for it.
Slots are kept beside the queue's jobs: this strategy needs the limiter on the
queue's Redis, and it limits admission only (a worker's own ``concurrency``
already bounds execution).
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import Field

from taskhub import Limiter, Options, RatePolicy, hookimpl

LUA = """
local M = {}
-- p = {limit, lease ms, retry ms}; the sorted set holds job id -> lease deadline (ms)
function M.check(ks, now, cost, p)
  local limit, lease = p[1], p[2]
  local held = redis.call('ZCOUNT', ks[1], '(' .. now, '+inf')
  local want = cost > 0 and 1 or 0  -- one slot whatever the cost; cost 0 only looks
  local d = {limit = limit, retry = 0, reset = 0}
  d.allowed = held + want <= limit
  d.remaining = math.max(limit - held - (d.allowed and want or 0), 0)
  if held > 0 then
    local last = redis.call('ZRANGE', ks[1], -1, -1, 'WITHSCORES')
    d.reset = math.max(0, tonumber(last[2]) - now)
  end
  if not d.allowed then d.retry = p[3] end
  return d
end
function M.commit(ks, now, cost, p, d, job)
  redis.call('ZREMRANGEBYSCORE', ks[1], '-inf', now)
  redis.call('ZADD', ks[1], now + p[2], job)
  redis.call('PEXPIREAT', ks[1], now + p[2])
end
return M
"""


class Concurrency(Limiter):
    """At most ``limit`` unfinished jobs per key."""

    name = "concurrency"
    lua = LUA
    deny_cacheable = False  # a slot frees whenever a job finishes
    executable = False
    holds_slot = True

    class Config(Options):
        limit: int = Field(
            5,
            ge=1,
            le=1_000_000,
            description="jobs of a key admitted and not yet finished (one slot each)",
        )
        lease: float = Field(
            3_600,
            ge=1,
            le=31_536_000,
            description="seconds after which a slot frees even if its job never finished",
        )
        retry_after: float = Field(
            1, ge=0.001, le=3_600, description="Retry-After in seconds when every slot is held"
        )

    config: Config

    def params(self) -> list[float]:
        c = self.config
        return [c.limit, round(c.lease * 1000), round(c.retry_after * 1000)]

    def policy(self) -> RatePolicy:
        return RatePolicy(limit=self.config.limit, window=self.config.lease)

    def keys(self, prefix: str, subject: str) -> list[str]:
        return [f"{prefix}:cc:{subject}"]


@hookimpl
def register_limiters(register: Callable[[type[Limiter]], None]) -> None:
    register(Concurrency)
