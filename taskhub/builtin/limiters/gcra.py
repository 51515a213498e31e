"""``gcra``: the generic cell rate algorithm, as redis-cell's ``CL.THROTTLE`` computes it.

``CL.THROTTLE key max_burst rate period cost``, decision for decision, on the
Redis clock in ms. With T = ``period``/``rate`` (the emission interval) and
τ = T·(``max_burst`` + 1) (the delay variation tolerance), the key holds the
theoretical arrival time (TAT). A TAT in the past reads as ``now``, as an
expired key does in redis-cell. For a request of cost n:

    tat = max(stored TAT, now);  new_tat = tat + T·n;  diff = now - (new_tat - τ)

- ``diff`` ≥ 0: admitted; the key becomes ``new_tat`` and ttl = new_tat - now.
- ``diff`` < 0: refused, nothing written; ttl = tat - now and retry = -diff,
  rounded up to a whole ms.

``limit`` = ``max_burst`` + 1, ``remaining`` = ⌊(τ - ttl)/T⌋ (0 if negative)
and ``reset`` = ttl rounded up to a whole ms: the time until the TAT is ``now``
again, when a full burst is available.

A cost whose T·n exceeds τ can never pass. redis-cell answers it "limited,
retry -1"; so do we: ``retry`` is -1, meaning "never", with ``remaining`` and
``reset`` as for any refusal. HTTP requests cost 1 and ``limit`` ≥ 1, so only
weighted callers can meet it.

Differences from redis-cell, all below a millisecond: redis-cell counts in
integer nanoseconds (T truncated to a whole ns) and rounds its replies to whole
seconds; we count in ms as IEEE doubles and round reset and retry up to a whole
ms (the headers then round up to seconds). ``period`` may be fractional.

The key is a string holding the TAT and expires at the TAT (``PEXPIREAT``, on
the decision clock), when it would read as ``now`` anyway.
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import Field

from taskhub import Limiter, Options, RatePolicy, hookimpl

LUA = """
local M = {}
-- p = {emission interval ms, delay variation tolerance ms, limit}; the key holds the TAT
function M.check(ks, now, cost, p)
  local interval, tolerance = p[1], p[2]
  local tat = math.max(tonumber(redis.call('GET', ks[1])) or now, now)
  local increment = interval * cost
  local new_tat = tat + increment
  local diff = now - (new_tat - tolerance)
  local d = {limit = p[3], new_tat = new_tat, retry = 0}
  local ttl = new_tat - now
  d.allowed = diff >= 0
  if not d.allowed then
    ttl = tat - now
    d.retry = -1
    if increment <= tolerance then d.retry = math.ceil(-diff) end
  end
  d.remaining = math.max(0, math.floor((tolerance - ttl) / interval))
  d.reset = math.ceil(ttl)
  return d
end
function M.commit(ks, now, cost, p, d)
  redis.call('SET', ks[1], d.new_tat)
  redis.call('PEXPIREAT', ks[1], math.max(math.ceil(d.new_tat), now + 1))
end
return M
"""


class Gcra(Limiter):
    """Bursts of ``max_burst`` + 1, sustained ``rate`` per ``period``: redis-cell's GCRA."""

    name = "gcra"
    lua = LUA

    class Config(Options):
        max_burst: int = Field(
            19,
            ge=0,
            le=1_000_000_000,
            description="requests allowed at once beyond the first (a burst of max_burst + 1)",
        )
        rate: int = Field(20, ge=1, le=1_000_000_000, description="requests per period, sustained")
        period: float = Field(
            60, gt=0, le=31_536_000, description="seconds over which rate requests are allowed"
        )

    config: Config

    def params(self) -> list[float]:
        c = self.config
        interval = c.period * 1000 / c.rate
        return [interval, interval * (c.max_burst + 1), c.max_burst + 1]

    def policy(self) -> RatePolicy:
        c = self.config
        # The window is the time an exhausted limiter takes to allow a full burst again.
        return RatePolicy(limit=c.max_burst + 1, window=c.period * (c.max_burst + 1) / c.rate)

    def keys(self, prefix: str, subject: str) -> list[str]:
        return [f"{prefix}:gcra:{subject}"]


@hookimpl
def register_limiters(register: Callable[[type[Limiter]], None]) -> None:
    register(Gcra)
