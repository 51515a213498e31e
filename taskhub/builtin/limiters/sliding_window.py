"""``sliding_window``: the weighted two-window counter (Cloudflare's, ``limits``' moving window).

Windows of ``period`` P are aligned to multiples of P on the decision clock
(the Redis clock, in ms). At time t in the window that starts at w = ⌊t/P⌋·P,
with c the cost admitted in that window and p the cost admitted in the one
before it, the estimated count is

    E(t) = p · (1 - (t - w)/P) + c

A request of cost n is admitted when the key is not blocked and
E(now) + n ≤ ``limit``. Only admitted requests are counted. A refusal, when
``block`` > 0 and the key is not already blocked, blocks it for ``block``
seconds (refusals during a block do not extend it).

What a decision returns, all in whole ms (c counts this request if admitted):

``remaining``
    ⌊limit - (E(now) + n)⌋ when admitted, max(0, ⌊limit - E(now)⌋) when refused.

``reset``
    ms until the estimate reaches 0 if no more requests arrive. With no new
    requests E is continuous and non-increasing: within window w it falls
    linearly from p + c to c; at the roll c becomes the previous count, so it
    falls from c to 0 over the next window. Hence reset = w + 2P - now when
    c > 0, w + P - now when c = 0 < p, and 0 when c = p = 0.

``retry``
    ms until a request of this cost would be admitted, for refusals: the least
    whole ms t ≥ now with E(t) + n ≤ limit, so with R = limit - n:

    - n > limit: the request can never pass: retry is -1 (see below);
    - c ≤ R: it passes in this window, at the latest at its roll. Solving
      p·(1 - (t - w)/P) + c ≤ R gives t ≥ w + P·(1 - (R - c)/p) (t = now if p = 0);
    - c > R: not before the roll. In the next window E(t) = c·(1 - (t - w - P)/P),
      so t ≥ w + P + P·(1 - R/c), which is at most w + 2P.

    t is rounded up to a whole ms, then moved ms by ms to the first one that the
    check itself, with its floating point, admits; the result is exact, and at
    least 1 for a refusal. A block raises retry to the block's end.

    The arithmetic is IEEE doubles (as in Lua). Where E(now) + n equals the
    limit exactly at a fractional weight, rounding can refuse the request; retry
    then names the next ms, the first the check admits.

A request costing more than ``limit`` is refused with retry -1, meaning
"never"; it still starts a block. HTTP requests cost 1 and ``limit`` ≥ 1, so
only weighted callers can meet it.

State is one hash per key (``win``: start of the window last written, ``cur``
and ``prev``: its count and the one before, ``blocked``: block end), so both
windows are in one hash slot. The key expires, on the decision clock, when the
estimate reaches 0 (w + 2P after an admission) or when the block ends,
whichever is later: after that it would read the same as no key. A clock that
steps back (a failover to a replica whose clock lags) keeps counting in the
stored window rather than reopening an earlier, empty one.
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import Field, field_validator

from taskhub import Limiter, Options, RatePolicy, hookimpl

LUA = """
local M = {}
-- p = {limit, period ms, block ms}; the hash holds win, cur, prev and blocked (ms)
-- window start, current and previous counts and the estimate at time t
local function at(s, t, period)
  local w = math.max(math.floor(t / period) * period, s.win or 0)
  local c, pv = 0, 0
  if s.win == w then
    c, pv = s.cur, s.prev
  elseif s.win == w - period then
    pv = s.cur
  end
  return w, c, pv, pv * (1 - math.max(t - w, 0) / period) + c
end
-- ms from now until a request of this cost fits under the limit; -1 for never
local function wait(s, now, cost, limit, period)
  if cost > limit then return -1 end
  local room = limit - cost
  local w, c, pv = at(s, now, period)
  local t = now
  if c > room then
    t = w + period + period * (1 - room / c)
  elseif pv > 0 then
    t = w + period * (1 - (room - c) / pv)
  end
  local function fits(u)
    local _, _, _, e = at(s, u, period)
    return e + cost <= limit
  end
  t = math.max(math.ceil(t), now)
  while not fits(t) do t = t + 1 end
  while t > now and fits(t - 1) do t = t - 1 end
  return t - now
end
local function reset(w, c, pv, now, period)
  if c > 0 then return w + 2 * period - now end
  if pv > 0 then return w + period - now end
  return 0
end
function M.check(ks, now, cost, p)
  local limit, period = p[1], p[2]
  local st = redis.call('HMGET', ks[1], 'win', 'cur', 'prev', 'blocked')
  local s = {win = tonumber(st[1]), cur = tonumber(st[2]) or 0, prev = tonumber(st[3]) or 0}
  local w, c, pv, est = at(s, now, period)
  local d = {limit = limit, w = w, cur = c, prev = pv, retry = 0}
  d.blocked = tonumber(st[4]) or 0
  d.allowed = d.blocked <= now and est + cost <= limit
  if d.allowed then
    d.remaining = math.floor(limit - (est + cost))
    d.reset = reset(w, c + cost, pv, now, period)
  else
    d.remaining = math.max(0, math.floor(limit - est))
    d.reset = reset(w, c, pv, now, period)
    d.retry = wait(s, now, cost, limit, period)
    if d.retry >= 0 then d.retry = math.max(d.retry, d.blocked - now) end
  end
  return d
end
function M.commit(ks, now, cost, p, d)
  redis.call('HSET', ks[1], 'win', d.w, 'cur', d.cur + cost, 'prev', d.prev)
  redis.call('PEXPIREAT', ks[1], math.max(d.w + 2 * p[2], d.blocked))
end
function M.refuse(ks, now, cost, p, d)
  local block = p[3]
  if block <= 0 or d.blocked > now then return end
  redis.call('HSET', ks[1], 'blocked', now + block)
  redis.call('PEXPIREAT', ks[1], now + math.max(d.reset, block))
  if d.retry >= 0 then d.retry = math.max(d.retry, block) end
end
return M
"""


class SlidingWindow(Limiter):
    """``limit`` per ``period`` seconds, weighted across two aligned windows; ``block``."""

    name = "sliding_window"
    lua = LUA

    class Config(Options):
        limit: int = Field(
            20,
            ge=1,
            le=1_000_000_000,
            description="requests admitted per window (weighted estimate)",
        )
        period: float = Field(
            60,
            ge=0.001,
            le=31_536_000,
            description="window length in seconds, a whole number of ms",
        )
        block: float = Field(
            0,
            ge=0,
            le=86_400,
            description="seconds a key stays blocked after a refusal (whole ms); 0: none",
        )

        @field_validator("period", "block")
        @classmethod
        def _whole_milliseconds(cls, value: float) -> float:
            # The clock counts whole ms: windows start, and blocks end, on one.
            if abs(value * 1000 - round(value * 1000)) > 1e-6:
                raise ValueError("must be a whole number of milliseconds")
            return value

    config: Config

    def params(self) -> list[float]:
        c = self.config
        return [c.limit, round(c.period * 1000), round(c.block * 1000)]

    def policy(self) -> RatePolicy:
        return RatePolicy(limit=self.config.limit, window=self.config.period)

    def keys(self, prefix: str, subject: str) -> list[str]:
        return [f"{prefix}:sw:{subject}"]


@hookimpl
def register_limiters(register: Callable[[type[Limiter]], None]) -> None:
    register(SlidingWindow)
