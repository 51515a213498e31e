"""The dashboard's traffic recorder on the real Redis (and on the test cluster and fakeredis):
what is flushed, with which TTLs, how several processes add up, and what reading gives back."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from taskhub.builtin.limiters.token_bucket import TokenBucket
from taskhub.limits.admission import Decision, Outcome
from taskhub.limits.policy import RequestContext, Rule, RuleResult
from taskhub.monitoring.traffic import MINUTE_TTL, SECOND_TTL, TrafficRecorder, traffic_prefix
from tests.support.backends import client_on
from tests.support.namespaces import Namespace
from tests.support.processes import free_port

NOW = 1_800_000_030.5  # half past second ...030, in minute 30_000_000
BUCKET = TokenBucket(TokenBucket.Config())
PER_USER = Rule.keyed("per_user", BUCKET, "user")
PER_IP = Rule.keyed("per_ip", BUCKET, "ip")


@pytest.fixture(params=["single", "memory", "cluster"])
async def client(request: pytest.FixtureRequest) -> AsyncIterator[aioredis.Redis]:
    conn = client_on(request.param, request)
    yield conn
    await conn.aclose()


@pytest.fixture
async def prefix(client: aioredis.Redis, ns: Namespace, request) -> AsyncIterator[str]:
    """The key prefix as the hub gives it: a hash tag on the cluster (every key in one slot).
    Afterwards the test's keys go (``ns`` cleans only the shared Redis)."""
    tagged = traffic_prefix(ns.prefix, request.node.callspec.params["client"] == "cluster")
    yield tagged
    keys = [key async for key in client.scan_iter(match=f"{tagged}:traffic:*")]
    if keys:
        await client.delete(*keys)


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def decision(outcome: Outcome, refusing: Rule | None = None) -> Decision:
    results = (
        ()
        if refusing is None
        else (RuleResult(refusing.name, refusing.policy, False, False, 0, 1000, 1000),)
    )
    return Decision(outcome, "job", 0, results)


def request(user: str, ip: str = "10.0.0.1") -> RequestContext:
    return RequestContext(user_id=user, task="log_completion", client_ip=ip)


def recorder(client: aioredis.Redis, prefix: str, clock: Clock, **options: int) -> TrafficRecorder:
    return TrafficRecorder(client, prefix, [PER_USER, PER_IP], clock=clock, **options)


async def test_flush_writes_counts_and_refused_keys_with_ttls(client, prefix) -> None:
    clock = Clock()
    traffic = recorder(client, prefix, clock)
    for _ in range(3):
        traffic.decided(decision(Outcome.ADMITTED), request("alice"))
    traffic.decided(decision(Outcome.DUPLICATE), request("alice"))  # a replay: neither
    traffic.decided(decision(Outcome.REFUSED, PER_USER), request("bob"))
    traffic.decided(decision(Outcome.REFUSED, PER_USER), request("bob"))
    traffic.decided(decision(Outcome.REFUSED, PER_IP), request("carol", ip="2001:db8::1"))
    await traffic.flush()

    second = f"{prefix}:traffic:s:1800000030"
    minute = f"{prefix}:traffic:refused:30000000"
    assert await client.hgetall(second) == {b"admitted": b"3", b"refused": b"3"}
    assert await client.zrange(minute, 0, -1, withscores=True) == [
        (b"per_ip:2001:db8::1", 1.0),
        (b"per_user:bob", 2.0),
    ]
    assert 0 < await client.ttl(second) <= SECOND_TTL
    assert 0 < await client.ttl(minute) <= MINUTE_TTL
    # Counted once: a second flush with nothing new writes nothing.
    assert (traffic.admitted, traffic.refused, traffic.keys) == (0, 0, {})
    await traffic.flush()
    assert await client.hgetall(second) == {b"admitted": b"3", b"refused": b"3"}


async def test_processes_add_up_and_read_gives_rates_series_and_top_keys(client, prefix) -> None:
    clock = Clock()
    one, two = recorder(client, prefix, clock), recorder(client, prefix, clock)
    for second in range(10):  # seconds ...020 to ...029: one admits 2/s, two admits 1/s
        clock.now = NOW - 10 + second
        for _ in range(2):
            one.decided(decision(Outcome.ADMITTED), request("alice"))
        two.decided(decision(Outcome.ADMITTED), request("alice"))
        two.decided(decision(Outcome.REFUSED, PER_USER), request("bob"))
        await one.flush()
        await two.flush()
    one.decided(decision(Outcome.REFUSED, PER_USER), request("dave"))
    one.decided(decision(Outcome.REFUSED, PER_USER), request("a:b"))  # a key with a colon
    clock.now = NOW
    await one.flush()  # into the current second, which reading leaves out

    view = await one.read(history=12, window=10, top=2)
    assert view.until == 1_800_000_030
    assert view.admitted == [0, 0] + [3] * 10
    assert view.refused == [0, 0] + [1] * 10
    assert (view.admitted_per_s, view.refused_per_s) == (3.0, 1.0)
    assert [(k.rule, k.key, k.refusals) for k in view.top_refused] == [
        ("per_user", "bob", 10),
        ("per_user", "a:b", 1),  # ties in name order
    ]
    assert view.to_json()["top_refused"][0] == {"rule": "per_user", "key": "bob", "refusals": 10}


async def test_top_keys_merge_this_minute_and_the_last(client, prefix) -> None:
    clock = Clock(NOW - 60)  # the minute before
    traffic = recorder(client, prefix, clock)
    for user in ("bob", "bob", "eve"):
        traffic.decided(decision(Outcome.REFUSED, PER_USER), request(user))
    await traffic.flush()
    clock.now = NOW
    for user in ("eve", "eve"):
        traffic.decided(decision(Outcome.REFUSED, PER_USER), request(user))
    await traffic.flush()
    view = await traffic.read()
    assert [(k.key, k.refusals) for k in view.top_refused] == [("eve", 3), ("bob", 2)]
    clock.now = NOW + 60  # two minutes on, the first minute no longer counts
    view = await traffic.read()
    assert [(k.key, k.refusals) for k in view.top_refused] == [("eve", 2)]


async def test_refused_keys_are_bounded_between_flushes(client, prefix) -> None:
    traffic = recorder(client, prefix, Clock(), max_keys=2)
    for user in ("a", "b", "c", "a"):
        traffic.decided(decision(Outcome.REFUSED, PER_USER), request(user))
    assert traffic.keys == {"per_user:a": 2, "per_user:b": 1}
    assert traffic.refused == 4  # the total still counts the one left out


async def test_counts_survive_an_unreachable_redis(client, prefix) -> None:
    down = aioredis.Redis(port=free_port(), socket_connect_timeout=0.5)
    traffic = recorder(down, prefix, Clock())
    traffic.decided(decision(Outcome.ADMITTED), request("alice"))
    traffic.decided(decision(Outcome.REFUSED, PER_USER), request("bob"))
    await traffic.flush()  # logged as an outage, not raised
    assert (traffic.admitted, traffic.refused, traffic.keys) == (1, 1, {"per_user:bob": 1})
    traffic.decided(decision(Outcome.ADMITTED), request("alice"))
    traffic.redis = client  # Redis is back
    await traffic.flush()
    await down.aclose()
    assert await client.hgetall(f"{prefix}:traffic:s:1800000030") == {
        b"admitted": b"2",
        b"refused": b"1",
    }


async def test_stop_flushes_what_is_still_counted(client, prefix) -> None:
    traffic = recorder(client, prefix, Clock())
    traffic.start()
    traffic.decided(decision(Outcome.ADMITTED), request("alice"))
    await traffic.stop()
    assert await client.hget(f"{prefix}:traffic:s:1800000030", "admitted") == b"1"
