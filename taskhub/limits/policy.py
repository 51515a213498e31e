"""Rate-limit policies: several rules, each a strategy counted per key, decided together.

A rule pairs a limiter strategy with what it counts by (the user id, the client
IP, a request header, the task name, or one constant key for everyone). A
policy is the list of rules one request must pass. The Lua that decides a
policy is built here; :mod:`taskhub.limits.admission` runs it, in front of the queue
or on its own.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

from taskhub.components import Limiter, QueueBackend, RatePolicy
from taskhub.store.keys import escape_subject

CONSTANT_SUBJECT = "all"


@dataclass(frozen=True, slots=True)
class RequestContext:
    """What rules may key on, gathered by the server for one submission."""

    user_id: str
    task: str
    client_ip: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Rule:
    """One strategy applied per key. ``source`` is user, ip, task, constant or header."""

    name: str
    limiter: Limiter
    source: str = "user"
    header: str = ""
    shadow: bool = False

    @classmethod
    def keyed(cls, name: str, limiter: Limiter, key: str, *, shadow: bool = False) -> Rule:
        """A rule from its config form: ``key`` is ``user``, ``ip``, ``header:X-Api-Key``..."""
        source, _, header = key.partition(":")
        return cls(name, limiter, source, header, shadow)

    @cached_property
    def policy(self) -> RatePolicy:
        return self.limiter.policy()

    @property
    def key_spec(self) -> str:
        return f"header:{self.header}" if self.source == "header" else self.source

    def subject(self, request: RequestContext) -> str:
        """The value this rule counts ``request`` under (requests without the header share one)."""
        if self.source == "user":
            return request.user_id
        if self.source == "ip":
            return request.client_ip
        if self.source == "task":
            return request.task
        if self.source == "header":
            return request.headers.get(self.header, "")
        return CONSTANT_SUBJECT

    def keys(self, prefix: str, subject: str) -> list[str]:
        """Redis keys: the rule name separates rules that share a strategy and a subject."""
        return self.limiter.keys(f"{prefix}:{self.name}", escape_subject(subject))


@dataclass(frozen=True, slots=True)
class RuleResult:
    """One rule's view of a decision, in the units response headers need."""

    name: str
    policy: RatePolicy
    allowed: bool
    shadow: bool
    remaining: int
    reset_ms: int
    retry_ms: int

    @property
    def refuses(self) -> bool:
        """Refused and enforced: a shadow rule reports a refusal but never makes one."""
        return not self.allowed and not self.shadow


def lua_number(value: float) -> str:
    """A Python number as a Lua literal that reads back exactly."""
    if isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"limiter parameter {value!r} is not a finite number")
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


NO_QUEUE_LUA = """
local Q = {}
function Q.exists(ks, a) return false end
function Q.depth(ks, a) return 0 end
function Q.push(ks, a) end
return Q
"""


class Outcome(enum.IntEnum):
    """What an admission script decided; its reply starts with this code."""

    REFUSED = 0
    ADMITTED = 1
    DUPLICATE = 2  # the job id was already stored: nothing new charged or queued
    FULL = 3  # the queue is at its maximum depth: nothing charged or queued


FIELDS_PER_RULE = 5


def build_script(
    rules: Sequence[Rule],
    queue: QueueBackend | None,
    *,
    body: str | None = None,
) -> str:
    """The Lua deciding ``rules`` and, if they all admit, pushing the job onto ``queue``.

    It checks every rule before writing anything, so either every rule is charged
    and the job stored, or nothing is charged (refused rules record only what
    their strategy's ``refuse`` defines, such as a block). ``queue=None`` decides
    the rules alone; ``body`` replaces the decision itself (execution limits
    queue jobs in line; ``taskhub limits show`` only reads).

    KEYS: each rule's keys in order, then the queue's. ARGV: clock override in ms
    ('' = Redis TIME), cost, maximum queue depth (0 = none), job id, then the
    queue's arguments. Reply: {outcome, now_ms} then, per rule, {allowed,
    limit, remaining, reset_ms, retry_ms}.
    """
    modules: dict[type[Limiter], int] = {}
    for rule in rules:
        modules.setdefault(type(rule.limiter), len(modules) + 1)
    chunks = [f"S[{index}] = (function()\n{cls.lua}\nend)()" for cls, index in modules.items()]
    entries, key_index = [], 0
    for rule in rules:
        count = rule.limiter.key_count
        keys = ", ".join(f"KEYS[{key_index + i + 1}]" for i in range(count))
        key_index += count
        params = ", ".join(lua_number(p) for p in rule.limiter.params())
        shadow = "true" if rule.shadow else "false"
        module = modules[type(rule.limiter)]
        entries.append(
            f"  {{m = S[{module}], ks = {{{keys}}}, p = {{{params}}}, shadow = {shadow}}},"
        )
    queue_lua = NO_QUEUE_LUA if queue is None else queue.enqueue_lua
    body = body or DECIDE_BODY
    return f"""
local S = {{}}
{chr(10).join(chunks)}
local Q = (function()
{queue_lua}
end)()
local rules = {{
{chr(10).join(entries)}
}}
local now = tonumber(ARGV[1])
if now == nil then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local cost = tonumber(ARGV[2])
local max_depth = tonumber(ARGV[3])
local job = ARGV[4]
local qk, qa = {{}}, {{}}
for i = {key_index + 1}, #KEYS do qk[#qk + 1] = KEYS[i] end
for i = 5, #ARGV do qa[#qa + 1] = ARGV[i] end
local function reply(outcome, ds)
  local out = {{outcome, now}}
  for i = 1, #rules do
    local d = ds[i]
    out[#out + 1] = d.allowed and 1 or 0
    out[#out + 1] = d.limit
    out[#out + 1] = d.remaining
    out[#out + 1] = d.reset
    out[#out + 1] = d.retry
  end
  return out
end
local function check_all(weight)
  local ds, refused = {{}}, false
  for i, r in ipairs(rules) do
    local d = r.m.check(r.ks, now, weight, r.p)
    ds[i] = d
    if not d.allowed and not r.shadow then refused = true end
  end
  return ds, refused
end
{body}
"""


DECIDE_BODY = f"""
if Q.exists(qk, qa) then
  local ds = check_all(0)
  return reply({Outcome.DUPLICATE:d}, ds)
end
local ds, refused = check_all(cost)
if refused then
  for i, r in ipairs(rules) do
    if not ds[i].allowed and r.m.refuse then r.m.refuse(r.ks, now, cost, r.p, ds[i]) end
  end
  return reply({Outcome.REFUSED:d}, ds)
end
if max_depth > 0 and Q.depth(qk, qa) >= max_depth then
  return reply({Outcome.FULL:d}, ds)
end
Q.push(qk, qa)
for i, r in ipairs(rules) do
  local d = ds[i]
  if d.allowed then
    r.m.commit(r.ks, now, cost, r.p, d, job)
  elseif r.m.refuse then
    r.m.refuse(r.ks, now, cost, r.p, d)
  end
end
return reply({Outcome.ADMITTED:d}, ds)
"""


def parse_rules(rules: Sequence[Rule], reply: Sequence[int]) -> tuple[RuleResult, ...]:
    """The per-rule part of a script reply, from index 2 on."""
    results = []
    for index, rule in enumerate(rules):
        base = 2 + index * FIELDS_PER_RULE
        allowed, _limit, remaining, reset_ms, retry_ms = reply[base : base + FIELDS_PER_RULE]
        results.append(
            RuleResult(
                rule.name,
                rule.policy,
                bool(int(allowed)),
                rule.shadow,
                int(remaining),
                int(reset_ms),
                int(retry_ms),
            )
        )
    return tuple(results)
