"""Drive one limiter strategy through the real admission script with a simulated clock."""

from __future__ import annotations

import redis.asyncio as aioredis
from helpers import Namespace
from models import Expected
from redis.asyncio.cluster import RedisCluster

from taskhub.admission import Admission, Outcome
from taskhub.builtin.handlers import LogCompletion
from taskhub.builtin.saq_queue import SaqQueue
from taskhub.components import Limiter, TaskSpec
from taskhub.config import RedisSettings
from taskhub.keys import key_tag
from taskhub.policy import RequestContext, Rule

SPEC = TaskSpec("log_completion", LogCompletion(LogCompletion.Config()))
# Simulated Redis clock, ms: far in the future, so no key expires in real time mid-test
# (strategies set absolute expiries on the decision clock).
T0 = 4_000_000_000_000


def admission_for(client: aioredis.Redis, ns: Namespace, limiter: Limiter) -> Admission:
    """One rule per user with ``limiter``, in front of the test's own queue."""
    queue = SaqQueue(SaqQueue.Config(name=ns.queue))
    return Admission(client, [Rule("user", limiter)], queue, key_layout(client, ns, queue))


def key_layout(client: aioredis.Redis, ns: Namespace, queue: SaqQueue) -> str:
    """The rules' key prefix, tagging the queue's keys as the hub does on a cluster."""
    settings = RedisSettings.model_construct(
        key_prefix=ns.prefix, cluster=isinstance(client, RedisCluster)
    )
    queue._tag_keys(key_tag(settings))
    return key_tag(settings) or ns.prefix


def keys_of(admission: Admission, user: str) -> list[str]:
    return admission.rule_keys(RequestContext(user, SPEC.name))


async def decide(admission: Admission, now: int, user: str = "u1", cost: int = 1) -> Expected:
    request = RequestContext(user_id=user, task=SPEC.name)
    decision = await admission.admit(SPEC, request, None, cost=cost, now_ms=now)
    (rule,) = decision.rules
    return Expected(
        decision.outcome is Outcome.ADMITTED, rule.remaining, rule.reset_ms, rule.retry_ms
    )
