"""Admission: the rate-limit decision and the enqueue, in one Lua script and one round trip.

The script is composed from the limiter's Lua (check, commit, refuse) and the
queue's Lua (exists, push). It checks first and writes only once the outcome is
known, so there is no half state: a 200 means the job is stored and the limiter
charged; a refusal charges only what the strategy's ``refuse`` defines; an error
changes nothing. A retried call with the same job id finds the job already
stored and charges nothing twice.
"""

from __future__ import annotations

import enum
import logging
import math
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from taskhub.components import Limiter, QueueBackend, RatePolicy, TaskSpec
from taskhub.errors import BackendUnavailable
from taskhub.keys import escape_subject
from taskhub.outage import OutageLog

logger = logging.getLogger(__name__)


class Outcome(enum.IntEnum):
    REFUSED = 0
    ADMITTED = 1
    DUPLICATE = 2  # the job id was already stored: nothing new charged or queued


@dataclass(frozen=True, slots=True)
class RuleState:
    """A rule's view after the decision, in the units headers need."""

    name: str
    policy: RatePolicy
    remaining: int
    reset_ms: int
    retry_ms: int


@dataclass(frozen=True, slots=True)
class Decision:
    outcome: Outcome
    job_id: str
    now_ms: int
    rule: RuleState


def lua_number(value: float) -> str:
    """A Python number as a Lua literal that reads back exactly."""
    if isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"limiter parameter {value!r} is not a finite number")
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def build_script(limiter: Limiter, queue: QueueBackend) -> str:
    """The admission script for one limiter rule in front of one queue.

    KEYS: the limiter's keys, then the queue's. ARGV: the clock override in ms
    (empty for the Redis clock), the request's cost, then the queue's arguments.
    Reply: {outcome, now_ms, limit, remaining, reset_ms, retry_ms}.
    """
    limiter_keys = ", ".join(f"KEYS[{i + 1}]" for i in range(limiter.key_count))
    params = ", ".join(lua_number(p) for p in limiter.params())
    return f"""
local L = (function()
{limiter.lua}
end)()
local Q = (function()
{queue.enqueue_lua}
end)()
local now = tonumber(ARGV[1])
if now == nil then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local cost = tonumber(ARGV[2])
local lk = {{{limiter_keys}}}
local p = {{{params}}}
local qk, qa = {{}}, {{}}
for i = {limiter.key_count + 1}, #KEYS do qk[#qk + 1] = KEYS[i] end
for i = 3, #ARGV do qa[#qa + 1] = ARGV[i] end
if Q.exists(qk, qa) then
  local d = L.check(lk, now, 0, p)
  return {{{Outcome.DUPLICATE}, now, d.limit, d.remaining, d.reset, 0}}
end
local d = L.check(lk, now, cost, p)
if not d.allowed then
  if L.refuse then L.refuse(lk, now, cost, p, d) end
  return {{{Outcome.REFUSED}, now, d.limit, d.remaining, d.reset, d.retry}}
end
Q.push(qk, qa)
L.commit(lk, now, cost, p, d)
return {{{Outcome.ADMITTED}, now, d.limit, d.remaining, d.reset, 0}}
"""


class Admission:
    """Admits tasks for one limiter and one queue on one Redis client."""

    def __init__(
        self, redis: Redis, limiter: Limiter, queue: QueueBackend, key_prefix: str
    ) -> None:
        self.limiter = limiter
        self.queue = queue
        self.key_prefix = key_prefix
        self.policy = limiter.policy()
        self.source = build_script(limiter, queue)
        self._script = redis.register_script(self.source)
        self._outage = OutageLog("Redis (admission)", logger)

    def limiter_keys(self, user_id: str) -> list[str]:
        return self.limiter.keys(self.key_prefix, escape_subject(user_id))

    async def admit(
        self,
        spec: TaskSpec,
        user_id: str,
        payload: Any,
        *,
        cost: int = 1,
        now_ms: int | None = None,
    ) -> Decision:
        """Decide and, if admitted, enqueue. Raises BackendUnavailable when Redis is down.

        ``now_ms`` overrides the Redis clock; only tests of the limiter maths use it.
        """
        job = self.queue.prepare(spec, user_id, payload)
        keys = [*self.limiter_keys(user_id), *job.keys]
        args = ["" if now_ms is None else str(now_ms), str(cost), *job.args]
        try:
            reply = await self._script(keys=keys, args=args)
        except Exception as exc:
            self._outage.absorb(exc)
            raise BackendUnavailable("Redis is unreachable") from exc
        self._outage.succeeded()
        outcome, now, _limit, remaining, reset_ms, retry_ms = (int(v) for v in reply)
        rule = RuleState(self.limiter.name, self.policy, remaining, reset_ms, retry_ms)
        return Decision(Outcome(outcome), job.job_id, now, rule)
