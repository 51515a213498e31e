"""Every limiter strategy, on generated traffic, decides exactly as its reference model.

Hypothesis draws a strategy's options and a request sequence (non-decreasing
simulated times, gaps from 0 ms to three of the strategy's time scales, costs
1 to 3, two users) and every decision, remaining, reset and retry from the
admission script must equal the model's in ``tests/support/limiter_models.py``.
Each strategy runs on the real Redis and on the embedded fakeredis.

The profile is fixed (``derandomize``, no example database), so every run and
CI try the same examples. Each example has its own user ids and deletes its
keys when done, so examples never share state.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taskhub.builtin.limiters.fixed_window import FixedWindow
from taskhub.builtin.limiters.gcra import Gcra
from taskhub.builtin.limiters.sliding_window import SlidingWindow
from taskhub.builtin.limiters.token_bucket import TokenBucket
from taskhub.components import Limiter
from taskhub.config.models import RedisSettings
from taskhub.store.clients import connect
from tests.support.limiter_harness import T0, admission_for, decide, keys_of
from tests.support.limiter_models import (
    GcraModel,
    RateLimiterRedisModel,
    SlidingWindowModel,
    TokenBucketModel,
)
from tests.support.namespaces import Namespace

MAX_EXAMPLES = 100
PROFILE = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Strategy:
    """A limiter class, its model built from the same config, and its time scale in ms."""

    limiter: type[Limiter]
    model: Callable[[Any], Any]
    scale_ms: Callable[[Any], float]
    options: st.SearchStrategy[dict[str, Any]]


def ms(low: int, high: int) -> st.SearchStrategy[float]:
    """Durations in seconds that are a whole number of milliseconds."""
    return st.integers(low, high).map(lambda n: n / 1000)


STRATEGIES = {
    "token_bucket": Strategy(
        TokenBucket,
        lambda c: TokenBucketModel(c.capacity, c.refill, c.period, c.block),
        lambda c: c.period * 1000 * c.capacity / c.refill,  # empty to full
        st.fixed_dictionaries(
            {
                "capacity": st.integers(1, 8),
                "refill": st.sampled_from([1, 2.5, 7, 20]) | st.integers(1, 30),
                "period": st.sampled_from([0.25, 1, 7, 60]) | ms(1, 60_000),
                "block": st.sampled_from([0, 0, 0.1, 1, 5]),
            }
        ),
    ),
    "fixed_window": Strategy(
        FixedWindow,
        lambda c: RateLimiterRedisModel(c.points, c.duration, c.block_duration),
        lambda c: c.duration * 1000,
        st.fixed_dictionaries(
            {
                "points": st.integers(1, 8),
                "duration": st.sampled_from([1, 2, 10, 60]),
                "block_duration": st.sampled_from([0, 0, 1, 5]),
            }
        ),
    ),
    "sliding_window": Strategy(
        SlidingWindow,
        lambda c: SlidingWindowModel(c.limit, c.period, c.block),
        lambda c: c.period * 1000,
        st.fixed_dictionaries(
            {
                "limit": st.sampled_from([1, 2, 3, 4, 6, 8]),
                "period": st.sampled_from([0.05, 1, 10, 60]) | ms(1, 60_000),
                "block": st.sampled_from([0, 0, 0.25, 1]) | ms(1, 5_000),
            }
        ),
    ),
    "gcra": Strategy(
        Gcra,
        lambda c: GcraModel(c.max_burst, c.rate, c.period),
        lambda c: c.period * 1000 * (c.max_burst + 1) / c.rate,  # the tolerance
        st.fixed_dictionaries(
            {
                "max_burst": st.integers(0, 7),
                "rate": st.integers(1, 30),
                "period": st.sampled_from([0.5, 1, 10, 60]) | ms(1, 60_000),
            }
        ),
    ),
}


@dataclass(frozen=True)
class Scenario:
    """One example: a strategy's options and requests as (gap ms, user 0/1, cost)."""

    name: str
    options: dict[str, Any]
    requests: list[tuple[int, int, int]]


@st.composite
def scenarios(draw: st.DrawFn, name: str) -> Scenario:
    strategy = STRATEGIES[name]
    options = draw(strategy.options)
    scale = max(1, round(strategy.scale_ms(strategy.limiter.Config(**options))))
    gap = st.just(0) | st.integers(0, 20) | st.integers(0, max(1, scale // 4))
    gap |= st.integers(0, scale) | st.integers(0, 3 * scale)
    request = st.tuples(gap, st.integers(0, 1), st.integers(1, 3))
    count = draw(st.integers(1, 60))
    return Scenario(name, options, draw(st.lists(request, min_size=count, max_size=count)))


async def play(client: aioredis.Redis, ns: Namespace, scenario: Scenario, tag: str) -> None:
    """Replay ``scenario`` through the admission script and through fresh models."""
    strategy = STRATEGIES[scenario.name]
    config = strategy.limiter.Config(**scenario.options)
    admission = admission_for(client, ns, strategy.limiter(config))
    users = [f"{tag}-a", f"{tag}-b"]
    models = {user: strategy.model(config) for user in users}
    now = T0
    try:
        for step, (gap, index, cost) in enumerate(scenario.requests):
            now += gap
            user = users[index]
            expected = models[user].request(now, cost)
            got = await decide(admission, now, user, cost)
            assert got == expected, f"step {step}: user {index}, T0 + {now - T0} ms, cost {cost}"
    finally:
        await forget(client, ns, [k for u in users for k in keys_of(admission, u)])


async def forget(client: aioredis.Redis, ns: Namespace, limiter_keys: list[str]) -> None:
    """Delete an example's limiter keys and the jobs it queued."""
    queued, incomplete = f"saq:{ns.queue}:queued", f"saq:{ns.queue}:incomplete"
    jobs = await client.lrange(queued, 0, -1)
    await client.delete(*limiter_keys, *jobs, queued, incomplete)


@pytest.mark.parametrize("backend", ["redis", "memory"])
@pytest.mark.parametrize("name", list(STRATEGIES))
def test_strategy_decides_as_its_model(name: str, backend: str, ns: Namespace, redis_url: str):
    url = redis_url if backend == "redis" else f"memory://strategy-models-{ns.id}"
    tags = (f"x{n}" for n in itertools.count())
    played = 0
    with asyncio.Runner() as runner:
        client = connect(RedisSettings(url=url))

        @PROFILE
        @given(scenario=scenarios(name))
        def replay(scenario: Scenario) -> None:
            nonlocal played
            played += 1
            runner.run(play(client, ns, scenario, next(tags)))

        try:
            replay()
        finally:
            runner.run(client.aclose())
    logger.info("%s on %s: %d examples played", name, backend, played)
    assert played >= MAX_EXAMPLES // 2  # hypothesis did not give up early
