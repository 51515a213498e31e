"""Drive one limiter strategy through the real admission script with a simulated clock."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from taskhub.builtin.limiters.token_bucket import TokenBucket
from taskhub.builtin.saq.queue import SaqQueue
from taskhub.builtin.tasks.log_completion import LogCompletion
from taskhub.components import Limiter, TaskSpec
from taskhub.limits.admission import Admission, Outcome
from taskhub.limits.policy import RequestContext, Rule
from tests.support.limiter_models import Expected
from tests.support.namespaces import Namespace

SPEC = TaskSpec("log_completion", LogCompletion(LogCompletion.Config()))
# Simulated Redis clock, ms: far in the future, so no key expires in real time mid-test
# (strategies set absolute expiries on the decision clock).
T0 = 4_000_000_000_000


def bucket(capacity: int, block: float = 0, refill: float = 1, period: float = 60) -> TokenBucket:
    return TokenBucket(
        TokenBucket.Config(capacity=capacity, refill=refill, period=period, block=block)
    )


def ctx(user: str = "u1", ip: str = "", **headers: str) -> RequestContext:
    return RequestContext(user_id=user, task=SPEC.name, client_ip=ip, headers=headers)


def admission_for(client: aioredis.Redis, ns: Namespace, limiter: Limiter) -> Admission:
    """One rule per user with ``limiter``, in front of the test's own queue."""
    return admission_on(client, ns, [Rule("user", limiter)], SaqQueue.Config(name=ns.queue))


def admission_on(
    client: aioredis.Redis,
    ns: Namespace,
    rules: Sequence[Rule],
    config: SaqQueue.Config,
    **options: Any,
) -> Admission:
    """Admission as the hub builds it: on a cluster every key carries its shard's tag."""
    queue = SaqQueue(config)
    shards = queue.layout(cluster=isinstance(client, RedisCluster))
    return Admission(client, rules, queue, ns.prefix, shards=shards, **options)


def queued_key(admission: Admission) -> str:
    """The waiting line of the (first) shard of the admission's queue."""
    queue = admission.queue
    assert isinstance(queue, SaqQueue)
    return f"saq:{queue.shards.queue_name(0)}:queued"


def keys_of(admission: Admission, user: str) -> list[str]:
    return admission.rule_keys(RequestContext(user, SPEC.name))


async def decide(admission: Admission, now: int, user: str = "u1", cost: int = 1) -> Expected:
    request = RequestContext(user_id=user, task=SPEC.name)
    decision = await admission.admit(SPEC, request, None, cost=cost, now_ms=now)
    (rule,) = decision.rules
    return Expected(
        decision.outcome is Outcome.ADMITTED, rule.remaining, rule.reset_ms, rule.retry_ms
    )
