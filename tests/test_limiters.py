"""Limiter maths, run through the real admission script against reference models.

The admission script accepts a clock override, so these tests drive Redis's
decisions with simulated time and compare every decision, remaining count,
reset and retry with the models in ``models.py``. They run on the real Redis
and on the embedded fakeredis, which must agree.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from helpers import Namespace
from models import Expected, RateLimiterRedisModel, TokenBucketModel

from taskhub.admission import Admission, Outcome
from taskhub.builtin.fixed_window import FixedWindow
from taskhub.builtin.handlers import LogCompletion
from taskhub.builtin.saq_queue import SaqQueue
from taskhub.builtin.token_bucket import TokenBucket
from taskhub.components import Limiter, TaskSpec
from taskhub.config import RedisSettings
from taskhub.policy import RequestContext, Rule
from taskhub.redis_client import connect

SPEC = TaskSpec("log_completion", LogCompletion(LogCompletion.Config()))
# Simulated Redis clock, ms: far in the future, so no key expires in real time mid-test
# (strategies set absolute expiries on the decision clock).
T0 = 4_000_000_000_000


@pytest.fixture(params=["redis", "memory"])
async def client(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[aioredis.Redis]:
    url = redis_url if request.param == "redis" else f"memory://limiters-{id(request)}"
    conn = connect(RedisSettings(url=url))
    yield conn
    await conn.aclose()


def admission_for(client: aioredis.Redis, ns: Namespace, limiter: Limiter) -> Admission:
    queue = SaqQueue(SaqQueue.Config(name=ns.queue))
    return Admission(client, [Rule("user", limiter)], queue, ns.prefix)


async def decide(admission: Admission, now: int, user: str = "u1", cost: int = 1) -> Expected:
    request = RequestContext(user_id=user, task=SPEC.name)
    decision = await admission.admit(SPEC, request, None, cost=cost, now_ms=now)
    (rule,) = decision.rules
    return Expected(
        decision.outcome is Outcome.ADMITTED, rule.remaining, rule.reset_ms, rule.retry_ms
    )


def token_bucket(**options: Any) -> tuple[TokenBucket, Callable[[], TokenBucketModel]]:
    config = TokenBucket.Config(**options)
    return TokenBucket(config), lambda: TokenBucketModel(
        config.capacity, config.refill, config.period, config.block
    )


def fixed_window(**options: Any) -> tuple[FixedWindow, Callable[[], RateLimiterRedisModel]]:
    config = FixedWindow.Config(**options)
    return FixedWindow(config), lambda: RateLimiterRedisModel(
        config.points, config.duration, config.block_duration
    )


# --------------------------------------------------------------------------- token bucket


async def test_burst_then_refusal_with_retry_after_one_token(client, ns) -> None:
    admission = admission_for(client, ns, token_bucket()[0])
    results = [await decide(admission, T0 + i) for i in range(21)]
    assert [r.allowed for r in results] == [True] * 20 + [False]
    assert [r.remaining for r in results[:20]] == list(range(19, -1, -1))
    refused = results[20]
    # The refusal comes 20 ms after the first request: 20 ms of refill is 1/150 of a
    # token, so the next whole token arrives 3000 - 20 = 2980 ms later (Retry-After: 3 s).
    assert refused.retry_ms == 2_980
    assert refused.reset_ms == 60_000 - 20


async def test_refill_is_continuous_and_capped(client, ns) -> None:
    admission = admission_for(client, ns, token_bucket(block=0)[0])
    for _ in range(20):
        await decide(admission, T0)
    assert not (await decide(admission, T0 + 2_999)).allowed
    assert (await decide(admission, T0 + 3_000)).allowed  # one token every 3 s
    assert not (await decide(admission, T0 + 3_001)).allowed
    # after ten idle minutes the bucket holds its capacity, not 200 tokens
    results = [await decide(admission, T0 + 600_000) for _ in range(21)]
    assert sum(r.allowed for r in results) == 20


async def test_block_refuses_even_when_tokens_return(client, ns) -> None:
    # one token every 100 ms, blocked for 1 s after a refusal
    admission = admission_for(client, ns, token_bucket(capacity=2, refill=10, period=1, block=1)[0])
    assert (await decide(admission, T0)).allowed
    assert (await decide(admission, T0)).allowed
    refused = await decide(admission, T0)
    assert not refused.allowed and refused.retry_ms == 1_000
    blocked = await decide(admission, T0 + 500)  # 5 tokens' worth of refill, still blocked
    assert not blocked.allowed and blocked.retry_ms == 500  # a refusal does not extend it
    assert (await decide(admission, T0 + 1_000)).allowed


async def test_refusal_costs_no_tokens_and_queues_nothing(client, ns, sync_redis) -> None:
    admission = admission_for(client, ns, token_bucket(capacity=1, block=0)[0])
    await decide(admission, T0)
    key = admission.rule_keys(RequestContext("u1", SPEC.name))[0]
    before = await client.hgetall(key)
    queued = await client.llen(f"saq:{ns.queue}:queued")
    for i in range(5):
        assert not (await decide(admission, T0 + i)).allowed
    assert await client.hgetall(key) == before
    assert await client.llen(f"saq:{ns.queue}:queued") == queued == 1


async def assert_matches_model(
    admission: Admission,
    make_model: Callable[[], Any],
    rng: random.Random,
    gaps: list[int],
    costs: list[int],
    steps: int,
) -> None:
    """Random two-user traffic: every decision must equal the model's."""
    models: dict[str, Any] = {}
    now = T0
    for step in range(steps):
        now += rng.choice(gaps)
        user = rng.choice(["a", "b"])
        cost = rng.choice(costs)
        expected = models.setdefault(user, make_model()).request(now, cost)
        assert await decide(admission, now, user, cost) == expected, step


@pytest.mark.parametrize("seed", range(12))
async def test_token_bucket_matches_the_model(client, ns, seed: int) -> None:
    rng = random.Random(seed)
    limiter, make_model = token_bucket(
        capacity=rng.choice([1, 3, 20, 50]),
        refill=rng.choice([1, 7, 20, 100]),
        period=rng.choice([0.5, 1, 60]),
        block=rng.choice([0, 0.25, 1]),
    )
    gaps = [0, 0, 1, 10, 150, 999, 3_000, 20_000]
    admission = admission_for(client, ns, limiter)
    await assert_matches_model(admission, make_model, rng, gaps, [1, 1, 1, 2], 120)


# --------------------------------------------------------------------------- fixed window


async def test_fixed_window_block_shortens_the_lockout(client, ns) -> None:
    """The seed's behaviour: 20, a 1 s block, then a fresh window of 20."""
    admission = admission_for(client, ns, fixed_window()[0])
    first = [await decide(admission, T0 + i) for i in range(25)]
    assert [r.allowed for r in first] == [True] * 20 + [False] * 5
    assert first[20].retry_ms == 1_000 and first[21].retry_ms == 999
    second = [await decide(admission, T0 + 1_020 + i) for i in range(21)]
    assert [r.allowed for r in second] == [True] * 20 + [False]


async def test_fixed_window_without_block_waits_for_the_window(client, ns) -> None:
    admission = admission_for(client, ns, fixed_window(points=2, duration=10, block_duration=0)[0])
    assert [(await decide(admission, T0 + i)).allowed for i in range(3)] == [True, True, False]
    late = await decide(admission, T0 + 5_000)
    assert not late.allowed and late.retry_ms == 5_000
    assert (await decide(admission, T0 + 10_000)).allowed


@pytest.mark.parametrize("seed", range(12))
async def test_fixed_window_matches_rate_limiter_flexible(client, ns, seed: int) -> None:
    rng = random.Random(1000 + seed)
    limiter, make_model = fixed_window(
        points=rng.choice([1, 5, 20]),
        duration=rng.choice([1, 10, 60]),
        block_duration=rng.choice([0, 1, 5]),
    )
    gaps = [0, 0, 1, 50, 400, 999, 2_000, 15_000]
    admission = admission_for(client, ns, limiter)
    await assert_matches_model(admission, make_model, rng, gaps, [1, 1, 2], 150)


# --------------------------------------------------------------------------- keys


@pytest.mark.parametrize(
    ("limiter", "strategy"),
    [(TokenBucket(TokenBucket.Config()), "tb"), (FixedWindow(FixedWindow.Config()), "fw")],
)
async def test_keys_expire_with_the_real_clock(client, ns, limiter: Limiter, strategy: str) -> None:
    admission = admission_for(client, ns, limiter)
    await admission.admit(SPEC, RequestContext("ttl-user", SPEC.name), None)
    key = admission.rule_keys(RequestContext("ttl-user", SPEC.name))[0]
    assert key == f"{ns.prefix}:user:{strategy}:ttl-user"
    ttl = await client.pttl(key)
    # token bucket: full again 3 s after one token is spent; fixed window: the 60 s window
    expected = 3_000 if strategy == "tb" else 60_000
    assert expected - 1_000 < ttl <= expected


async def test_user_ids_map_to_distinct_keys_that_cannot_pick_a_slot(client, ns) -> None:
    admission = admission_for(client, ns, token_bucket(capacity=1, block=0)[0])
    users = ["a:b", "a%3Ab", "a", "a:", "{a}", "{a}b", "é", "x" * 256, "a b", "a/b"]
    for user in users:
        assert (await decide(admission, T0, user)).allowed, user  # each has its own bucket
    keys = [admission.rule_keys(RequestContext(u, SPEC.name))[0] for u in users]
    assert len(set(keys)) == len(users)
    for key in keys:
        subject = key.removeprefix(f"{ns.prefix}:user:tb:")
        assert not set(subject) & set(":{}"), key
