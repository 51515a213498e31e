"""Limiter maths, run through the real admission script against reference models.

The admission script accepts a clock override, so these tests drive Redis's
decisions with simulated time and compare every decision, remaining count,
reset and retry with the models in ``tests/support/limiter_models.py``. They run
on the real Redis and on the embedded fakeredis, which must agree.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from taskhub.builtin.limiters.fixed_window import FixedWindow
from taskhub.builtin.limiters.gcra import Gcra
from taskhub.builtin.limiters.sliding_window import SlidingWindow
from taskhub.builtin.limiters.token_bucket import TokenBucket
from taskhub.components import Limiter
from taskhub.limits.admission import Admission
from taskhub.limits.policy import RequestContext
from tests.support.backends import client_on
from tests.support.limiter_harness import SPEC, T0, admission_for, decide, keys_of, queued_key
from tests.support.limiter_models import (
    Expected,
    GcraModel,
    RateLimiterRedisModel,
    SlidingWindowModel,
    TokenBucketModel,
)


@pytest.fixture(params=["single", "memory", "cluster"])
async def client(request: pytest.FixtureRequest) -> AsyncIterator[aioredis.Redis]:
    conn = client_on(request.param, request)
    yield conn
    await conn.aclose()


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


def sliding_window(**options: Any) -> tuple[SlidingWindow, Callable[[], SlidingWindowModel]]:
    config = SlidingWindow.Config(**options)
    return SlidingWindow(config), lambda: SlidingWindowModel(
        config.limit, config.period, config.block
    )


def gcra(**options: Any) -> tuple[Gcra, Callable[[], GcraModel]]:
    config = Gcra.Config(**options)
    return Gcra(config), lambda: GcraModel(config.max_burst, config.rate, config.period)


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
    queued = await client.llen(queued_key(admission))
    for i in range(5):
        assert not (await decide(admission, T0 + i)).allowed
    assert await client.hgetall(key) == before
    assert await client.llen(queued_key(admission)) == queued == 1


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


# --------------------------------------------------------------------------- sliding window
# T0 is a multiple of 10 s, so with a 10 s period the windows start at T0, T0 + 10 s, ...


async def test_sliding_window_burst_refusal_and_the_weighted_recovery(client, ns) -> None:
    admission = admission_for(client, ns, sliding_window(limit=5, period=10)[0])
    burst = [await decide(admission, T0) for _ in range(5)]
    assert [r.allowed for r in burst] == [True] * 5
    assert [r.remaining for r in burst] == [4, 3, 2, 1, 0]
    assert burst[-1].reset_ms == 20_000  # this window's 5 weigh on the next one until 20 s
    # At 1 s the 6th must wait for the next window, until 5 x (1 - f) + 1 <= 5: f = 0.2,
    # that is 12 s.
    assert await decide(admission, T0 + 1_000) == Expected(False, 0, 19_000, 11_000)
    assert not (await decide(admission, T0 + 11_999)).allowed
    assert await decide(admission, T0 + 12_000) == Expected(True, 0, 18_000, 0)
    # Now 5 x (1 - f) + 1 + 1 <= 5 needs f = 0.4: at 14 s.
    assert await decide(admission, T0 + 12_001) == Expected(False, 0, 17_999, 1_999)
    assert (await decide(admission, T0 + 14_000)).allowed
    # At 20 s the previous window holds 2 (at full weight), the current one nothing.
    assert await decide(admission, T0 + 20_000) == Expected(True, 2, 20_000, 0)


async def test_sliding_window_refusals_are_not_counted(client, ns) -> None:
    admission = admission_for(client, ns, sliding_window(limit=1, period=10)[0])
    assert (await decide(admission, T0)).allowed
    key = keys_of(admission, "u1")[0]
    before = await client.hgetall(key)
    for i in range(1, 5):
        assert not (await decide(admission, T0 + i * 1_000)).allowed
    assert await client.hgetall(key) == before
    # the 1 admitted in window 0 s weighs on window 10 s, until its very end
    assert not (await decide(admission, T0 + 19_999)).allowed
    assert (await decide(admission, T0 + 20_000)).allowed


async def test_sliding_window_block_is_not_extended(client, ns) -> None:
    admission = admission_for(client, ns, sliding_window(limit=2, period=1, block=5)[0])
    assert (await decide(admission, T0)).allowed and (await decide(admission, T0)).allowed
    refused = await decide(admission, T0 + 1)
    # the estimate alone would allow it at 1.5 s; the block holds it until 5 s
    assert not refused.allowed and refused.retry_ms == 5_000
    blocked = await decide(admission, T0 + 2_000)  # the estimate is 0 by now
    assert blocked == Expected(False, 2, 0, 3_001)
    assert (await decide(admission, T0 + 5_001)).allowed


async def test_sliding_window_request_over_the_limit_is_never_admitted(client, ns) -> None:
    admission = admission_for(client, ns, sliding_window(limit=5, period=10)[0])
    assert await decide(admission, T0, cost=6) == Expected(False, 5, 0, -1)
    assert await client.exists(keys_of(admission, "u1")[0]) == 0  # nothing written


async def test_sliding_window_clock_stepping_back_keeps_the_count(client, ns) -> None:
    admission = admission_for(client, ns, sliding_window(limit=2, period=10)[0])
    assert (await decide(admission, T0 + 10_000)).allowed
    assert (await decide(admission, T0 + 10_000)).allowed
    # 9 s is in the window before, which must not read as empty
    assert await decide(admission, T0 + 9_000) == Expected(False, 0, 21_000, 16_000)


async def test_sliding_window_retry_is_the_checks_own_first_admission(client, ns) -> None:
    """Where double rounding refuses what exact arithmetic admits, retry still lands exactly.

    31 per 3 ms: 30 in one window, then 9 one ms into the next. A request of 2 makes
    30 x (1 - 1/3) + 9 + 2, which is 31 exactly but 31.000000000000004 in doubles: refused,
    and the closed form's answer (now) is moved on to the first ms the check admits.
    """
    limiter, make_model = sliding_window(limit=31, period=0.003)
    admission = admission_for(client, ns, limiter)
    model = make_model()
    window = T0 + 5  # a multiple of 3 ms
    steps = [(window - 3, 2)] * 15 + [(window + 1, 1)] * 9 + [(window + 1, 2), (window + 2, 2)]
    results = [await decide(admission, at, cost=cost) for at, cost in steps]
    assert results == [model.request(at, cost) for at, cost in steps]
    assert results[-2] == Expected(False, 1, 5, 1)
    assert results[-1].allowed


async def test_sliding_window_key_expires_when_the_estimate_is_zero(client, ns) -> None:
    admission = admission_for(client, ns, sliding_window(limit=1, period=10, block=30)[0])
    key = keys_of(admission, "u1")[0]
    assert (await decide(admission, T0 + 1_000)).allowed
    assert await client.pexpiretime(key) == T0 + 20_000
    assert not (await decide(admission, T0 + 2_000)).allowed  # blocked until 32 s
    assert await client.pexpiretime(key) == T0 + 32_000


# --------------------------------------------------------------------------- gcra


async def test_gcra_burst_then_one_every_emission_interval(client, ns) -> None:
    admission = admission_for(client, ns, gcra()[0])  # limit 20, one every 3 s
    results = [await decide(admission, T0) for _ in range(21)]
    assert [r.allowed for r in results] == [True] * 20 + [False]
    assert [r.remaining for r in results[:20]] == list(range(19, -1, -1))
    assert results[20] == Expected(False, 0, 60_000, 3_000)
    assert await decide(admission, T0 + 2_999) == Expected(False, 0, 57_001, 1)
    assert await decide(admission, T0 + 3_000) == Expected(True, 0, 60_000, 0)
    key = keys_of(admission, "u1")[0]
    assert await client.pexpiretime(key) == T0 + 63_000  # the TAT


async def test_gcra_reproduces_redis_cells_own_test_table(client, ns) -> None:
    """redis-cell's ``it_rate_limits``: max_burst 4, one per second."""
    admission = admission_for(client, ns, gcra(max_burst=4, rate=1, period=1)[0])
    cases = [
        # (ms after start, quantity, allowed, remaining, reset ms, retry ms)
        (0, 6, False, 5, 0, -1),  # more than the burst: never (redis-cell: retry -1)
        (0, 1, True, 4, 1_000, 0),
        (0, 1, True, 3, 2_000, 0),
        (0, 1, True, 2, 3_000, 0),
        (0, 1, True, 1, 4_000, 0),
        (0, 1, True, 0, 5_000, 0),
        (0, 1, False, 0, 5_000, 1_000),
        (3_000, 1, True, 2, 3_000, 0),
        (3_100, 1, True, 1, 3_900, 0),
        (4_000, 1, True, 1, 4_000, 0),
        (8_000, 1, True, 4, 1_000, 0),
        (9_500, 1, True, 4, 1_000, 0),
        (9_500, 0, True, 4, 1_000, 0),  # a zero quantity peeks
        (9_500, 2, True, 2, 3_000, 0),
        (9_500, 5, False, 2, 3_000, 3_000),
    ]
    for at, quantity, *expected in cases:
        assert await decide(admission, T0 + at, cost=quantity) == Expected(*expected), at


async def test_gcra_fractional_emission_interval(client, ns) -> None:
    # 7 per 10 s: one every 1428.57... ms; a burst of 2
    admission = admission_for(client, ns, gcra(max_burst=1, rate=7, period=10)[0])
    assert (await decide(admission, T0)).allowed and (await decide(admission, T0)).allowed
    refused = await decide(admission, T0)
    assert refused == Expected(False, 0, 2_858, 1_429)
    assert not (await decide(admission, T0 + 1_428)).allowed
    assert (await decide(admission, T0 + 1_429)).allowed


# --------------------------------------------------------------------------- keys


@pytest.mark.parametrize(
    ("limiter", "strategy", "low", "high"),
    [
        # full again 3 s after one token is spent
        (TokenBucket(TokenBucket.Config()), "tb", 2_000, 3_000),
        # the 60 s window
        (FixedWindow(FixedWindow.Config()), "fw", 59_000, 60_000),
        # the end of the next aligned 60 s window
        (SlidingWindow(SlidingWindow.Config()), "sw", 60_000, 120_000),
        # the TAT, one emission interval on
        (Gcra(Gcra.Config()), "gcra", 2_000, 3_000),
    ],
)
async def test_keys_expire_with_the_real_clock(
    client, ns, limiter: Limiter, strategy: str, low: int, high: int
) -> None:
    admission = admission_for(client, ns, limiter)
    await admission.admit(SPEC, RequestContext("ttl-user", SPEC.name), None)  # Redis clock
    key = keys_of(admission, "ttl-user")[0]
    assert key == f"{admission.key_prefix_for('ttl-user')}:user:{strategy}:ttl-user"
    ttl = await client.pttl(key)
    assert low < ttl <= high


async def test_user_ids_map_to_distinct_keys_that_cannot_pick_a_slot(client, ns) -> None:
    admission = admission_for(client, ns, token_bucket(capacity=1, block=0)[0])
    users = ["a:b", "a%3Ab", "a", "a:", "{a}", "{a}b", "é", "x" * 256, "a b", "a/b"]
    for user in users:
        assert (await decide(admission, T0, user)).allowed, user  # each has its own bucket
    keys = [keys_of(admission, u)[0] for u in users]
    assert len(set(keys)) == len(users)
    for user, key in zip(users, keys, strict=True):
        subject = key.removeprefix(f"{admission.key_prefix_for(user)}:user:tb:")
        assert not set(subject) & set(":{}"), key
