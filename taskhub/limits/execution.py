"""Execution limits: rules a worker applies when a job is about to run.

Admission limits how fast tasks are *accepted*; these limit how fast they *run*
(at most 5 jobs/s per user, 100/s overall). A job over its limit is not failed
and is not retried in a loop: it is rescheduled for the moment it may run and
the worker forgets it until then.

To keep a backlog from waking all at once and mostly failing again, the script
also keeps a waiting line per rule and key: each deferred job takes the next
slot, one average interval (the rule's window / limit, times the job's cost)
after the previous one. So N waiting jobs cost about N checks in total, not N
per interval, and the worker stays idle between them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from redis.asyncio import Redis

from taskhub.errors import BackendUnavailable
from taskhub.limits.fail_modes import FailMode, FailModeScript
from taskhub.limits.policy import Outcome, RequestContext, Rule, build_script, parse_rules
from taskhub.store.sharding import UNSHARDED, Shards

logger = logging.getLogger(__name__)

# While the limiter's Redis is unreachable in fail_mode closed, jobs wait this long.
CLOSED_RETRY_MS = 1_000

# KEYS after the rules' own: one waiting-line key per rule; ARGV after the fixed
# four: each rule's slot length in ms for this job's cost.
EXECUTION_BODY = f"""
local ds, refused = check_all(cost)
if not refused then
  for i, r in ipairs(rules) do
    local d = ds[i]
    if d.allowed then r.m.commit(r.ks, now, cost, r.p, d, job)
    elseif r.m.refuse then r.m.refuse(r.ks, now, cost, r.p, d) end
  end
  return reply({Outcome.ADMITTED:d}, ds)
end
local wait, line = 0, 0
for i, r in ipairs(rules) do
  local d = ds[i]
  if not d.allowed and not r.shadow and d.retry >= wait then wait, line = d.retry, i end
end
local at = now + wait
local queued_at = tonumber(redis.call('GET', qk[line]))
if queued_at and queued_at > at then at = queued_at end
local step = tonumber(qa[line])
redis.call('SET', qk[line], at + step, 'PX', math.max(1, at + step - now))
ds[line].retry = at - now
return reply({Outcome.REFUSED:d}, ds)
"""


def waiting_line(rule_keys: list[str]) -> str:
    """The key of a rule's waiting line for one subject, beside the rule's own keys."""
    return f"{rule_keys[0]}:line"


class ExecutionGate:
    """Decides whether a job may run now, or in how many milliseconds."""

    def __init__(
        self,
        redis: Redis,
        rules: Sequence[Rule],
        key_prefix: str,
        fail_mode: FailMode,
        shards: Shards = UNSHARDED,
    ) -> None:
        self.rules = tuple(rules)
        self.key_prefix = key_prefix
        # A decision's keys live in the user's home shard, as at admission: one slot, and
        # one count per user however his jobs are placed (in turn, they are anywhere).
        self.shards = shards
        self._prefixes = shards.key_prefixes(key_prefix)
        self.fail_mode = fail_mode
        source = build_script(self.rules, None, body=EXECUTION_BODY)
        self._script = FailModeScript(redis, source, fail_mode, "execution limits")

    async def wait_ms(self, task: str, user_id: str, job_id: str, cost: int = 1) -> int:
        """0 if the job may run now (and it is charged), else how long it must wait."""
        request = RequestContext(user_id=user_id, task=task)
        prefix = self._prefixes[self.shards.shard_for(user_id)]
        keys, lines, steps = [], [], []
        for rule in self.rules:
            rule_keys = rule.keys(prefix, rule.subject(request))
            keys.extend(rule_keys)
            lines.append(waiting_line(rule_keys))
            policy = rule.policy
            steps.append(str(max(1, round(policy.window * 1000 / policy.limit * cost))))
        args = ["", str(cost), "0", job_id, *steps]
        try:
            reply, _ = await self._script([*keys, *lines], args)
        except BackendUnavailable:
            return CLOSED_RETRY_MS  # fail_mode closed: wait for the limiter, never fail
        if reply is None or int(reply[0]) == Outcome.ADMITTED:  # None: fail_mode open
            return 0
        assert int(reply[0]) == Outcome.REFUSED
        return max(1, *(r.retry_ms for r in parse_rules(self.rules, reply) if r.refuses))
