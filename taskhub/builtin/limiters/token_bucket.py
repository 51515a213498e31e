"""``token_bucket``: the default limiter, a real token bucket refilled continuously.

A bucket holds up to ``capacity`` tokens and gains ``refill`` tokens every
``period`` seconds, continuously (20 per 60 s is one token every 3 s). Each
admitted request takes ``cost`` tokens; a refusal takes none, but blocks the key
for ``block`` seconds (requests during a block are refused and do not extend
it). State is one hash per key, read and written with the Redis clock, and the
key expires once the bucket would be full again.
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import Field

from taskhub import Limiter, Options, RatePolicy, hookimpl

LUA = """
local M = {}
-- p = {capacity, tokens per ms, block ms}; the hash holds tokens, ts (ms), blocked (ms)
function M.check(ks, now, cost, p)
  local cap, rate = p[1], p[2]
  local st = redis.call('HMGET', ks[1], 'tokens', 'ts', 'blocked')
  local tokens = tonumber(st[1])
  local ts = tonumber(st[2]) or now
  if tokens == nil then
    tokens = cap
  elseif now > ts then
    tokens = math.min(cap, tokens + (now - ts) * rate)
  end
  local blocked = tonumber(st[3]) or 0
  local d = {limit = cap, tokens = tokens, blocked = blocked, retry = 0}
  d.allowed = blocked <= now and tokens >= cost
  local left = tokens
  if d.allowed then
    left = tokens - cost
  else
    if tokens < cost then d.retry = math.ceil((cost - tokens) / rate) end
    d.retry = math.max(d.retry, blocked - now)
  end
  d.remaining = math.floor(left)
  d.reset = math.ceil((cap - left) / rate)
  return d
end
function M.commit(ks, now, cost, p, d)
  redis.call('HSET', ks[1], 'tokens', d.tokens - cost, 'ts', now)
  redis.call('PEXPIREAT', ks[1], now + math.max(1, d.reset, d.blocked - now))
end
function M.refuse(ks, now, cost, p, d)
  local block = p[3]
  if block <= 0 or d.blocked > now then return end
  redis.call('HSET', ks[1], 'blocked', now + block)
  redis.call('PEXPIREAT', ks[1], now + math.max(1, d.reset, block))
  d.retry = math.max(d.retry, block)
end
return M
"""


class TokenBucket(Limiter):
    """Burst of ``capacity``, sustained ``refill`` per ``period``, ``block`` after a refusal."""

    name = "token_bucket"
    lua = LUA

    class Config(Options):
        capacity: int = Field(
            20, ge=1, le=1_000_000_000, description="tokens a full bucket holds: the burst size"
        )
        refill: float = Field(
            20, gt=0, le=1_000_000_000, description="tokens added per period, continuously"
        )
        period: float = Field(
            60, gt=0, le=31_536_000, description="seconds over which refill tokens come back"
        )
        block: float = Field(
            1,
            ge=0,
            le=86_400,
            description="seconds a key stays blocked after a refused request; 0: none",
        )

    config: Config

    def params(self) -> list[float]:
        c = self.config
        return [c.capacity, c.refill / (c.period * 1000), c.block * 1000]

    def policy(self) -> RatePolicy:
        c = self.config
        # The window is the time an empty bucket takes to fill: `capacity` per that window.
        return RatePolicy(limit=c.capacity, window=c.period * c.capacity / c.refill)

    def keys(self, prefix: str, subject: str) -> list[str]:
        return [f"{prefix}:tb:{subject}"]


@hookimpl
def register_limiters(register: Callable[[type[Limiter]], None]) -> None:
    register(TokenBucket)
