"""Policies: several rules decided in one script, keyed on user, IP, header, task or constant.

These drive the admission script in-process on the real Redis, with the simulated
clock where the maths matters.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from ipaddress import ip_network

import pytest
import redis.asyncio as aioredis

from taskhub.builtin.limiters.concurrency import Concurrency
from taskhub.builtin.limiters.fixed_window import FixedWindow
from taskhub.builtin.saq.queue import SaqQueue
from taskhub.config.models import RedisSettings
from taskhub.limits.admission import Admission, Outcome
from taskhub.limits.deny_cache import DenyCache
from taskhub.limits.headers import rate_limit_headers
from taskhub.limits.policy import Rule, RuleResult
from taskhub.store.clients import connect
from taskhub.web.client_ip import ClientAddress
from tests.support.backends import client_on
from tests.support.limiter_harness import SPEC, T0, admission_on, bucket, ctx, queued_key
from tests.support.namespaces import Namespace


@pytest.fixture(params=["single", "cluster"])
async def client(request: pytest.FixtureRequest) -> AsyncIterator[aioredis.Redis]:
    conn = client_on(request.param, request)
    yield conn
    await conn.aclose()


def admission(client: aioredis.Redis, ns: Namespace, *rules: Rule, **options) -> Admission:
    return admission_on(client, ns, rules, SaqQueue.Config(name=ns.queue, **options))


async def test_a_refusal_by_the_second_rule_leaves_the_first_untouched(client, ns) -> None:
    per_user = Rule("per_user", bucket(5))
    overall = Rule.keyed("overall", bucket(3), "constant")
    gate = admission(client, ns, per_user, overall)
    for user in ("a", "b", "c"):
        assert (await gate.admit(SPEC, ctx(user), None, now_ms=T0)).outcome is Outcome.ADMITTED
    user_key, _ = gate.rule_keys(ctx("d"))
    assert await client.exists(user_key) == 0  # "d" has never been charged
    before = await client.hgetall(gate.rule_keys(ctx("a"))[0])

    refused = await gate.admit(SPEC, ctx("d"), None, now_ms=T0 + 1)
    assert refused.outcome is Outcome.REFUSED
    assert [r.name for r in refused.refusing] == ["overall"]
    assert refused.rules[0].allowed  # per_user would have admitted ...
    assert await client.exists(user_key) == 0  # ... and was not charged
    assert await client.hgetall(gate.rule_keys(ctx("a"))[0]) == before
    assert await client.llen(queued_key(gate)) == 3


async def test_the_429_names_the_rule_with_the_longest_wait(client, ns) -> None:
    fast = Rule("fast", bucket(1, refill=1, period=1))  # next token in 1 s
    slow = Rule("slow", bucket(1, refill=1, period=60))  # next token in 60 s
    gate = admission(client, ns, fast, slow)
    assert (await gate.admit(SPEC, ctx(), None, now_ms=T0)).outcome is Outcome.ADMITTED
    refused = await gate.admit(SPEC, ctx(), None, now_ms=T0)
    assert {r.name for r in refused.refusing} == {"fast", "slow"}
    assert refused.deciding is not None and refused.deciding.name == "slow"
    headers = rate_limit_headers(refused)
    assert headers["Retry-After"] == "60"
    assert headers["RateLimit-Policy"] == '"fast";q=1;w=1, "slow";q=1;w=60'
    assert headers["RateLimit"].startswith('"fast";r=0;t=1, "slow";r=0;t=60')


async def test_every_rule_is_charged_together_with_its_cost(client, ns) -> None:
    gate = admission(
        client, ns, Rule("per_user", bucket(10)), Rule.keyed("per_task", bucket(10), "task")
    )
    decision = await gate.admit(SPEC, ctx(), None, cost=4, now_ms=T0)
    assert decision.outcome is Outcome.ADMITTED
    assert [r.remaining for r in decision.rules] == [6, 6]
    decision = await gate.admit(SPEC, ctx("other"), None, cost=4, now_ms=T0)
    assert [r.remaining for r in decision.rules] == [6, 2]  # the task rule is shared
    refused = await gate.admit(SPEC, ctx("third"), None, cost=4, now_ms=T0)
    assert [r.name for r in refused.refusing] == ["per_task"]


async def test_rules_key_on_ip_header_task_and_constant(client, ns) -> None:
    rules = [
        Rule.keyed("ip", bucket(1), "ip"),
        Rule.keyed("api_key", bucket(1), "header:X-Api-Key"),
        Rule.keyed("task", bucket(1), "task"),
        Rule.keyed("all", bucket(1), "constant"),
    ]
    gate = admission(client, ns, *rules)
    prefix = gate.key_prefix_for("u1")  # on a cluster: with the shard's hash tag
    keys = gate.rule_keys(ctx("u1", ip="203.0.113.7", **{"X-Api-Key": "k:1"}))
    assert keys == [
        f"{prefix}:ip:tb:203.0.113.7",
        f"{prefix}:api_key:tb:k%3A1",
        f"{prefix}:task:tb:log_completion",
        f"{prefix}:all:tb:all",
    ]
    # requests without the header share one key
    assert gate.rule_keys(ctx("u2"))[1] == f"{prefix}:api_key:tb:"


async def test_shadow_rule_counts_and_reports_but_never_refuses(client, ns, caplog) -> None:
    shadow = Rule("trial", bucket(2), shadow=True)
    gate = admission(client, ns, Rule("real", bucket(100)), shadow)
    caplog.set_level(logging.INFO, logger="taskhub.limits.admission")
    decisions = [await gate.admit(SPEC, ctx(), None, now_ms=T0 + i) for i in range(5)]
    assert [d.outcome for d in decisions] == [Outcome.ADMITTED] * 5
    assert [d.rules[1].allowed for d in decisions] == [True, True, False, False, False]
    assert decisions[-1].deciding is not None and decisions[-1].deciding.name == "trial"
    headers = rate_limit_headers(decisions[-1])
    assert "Retry-After" not in headers and headers["X-RateLimit-Remaining"] == "0"
    assert gate._shadow.totals == {"trial": 3}
    shadow_logs = [r for r in caplog.records if "shadow rule 'trial'" in r.getMessage()]
    assert len(shadow_logs) == 1  # the first at once, the rest summed up later
    assert await client.llen(queued_key(gate)) == 5


async def test_backpressure_inside_the_script_charges_nothing(client, ns) -> None:
    gate = admission(client, ns, Rule("per_user", bucket(100)), max_depth=3)
    outcomes = [(await gate.admit(SPEC, ctx(), None, now_ms=T0)).outcome for _ in range(5)]
    assert outcomes == [Outcome.ADMITTED] * 3 + [Outcome.FULL] * 2
    state = await client.hgetall(gate.rule_keys(ctx())[0])
    assert float(state[b"tokens"]) == 97  # the two 503s spent nothing


async def test_an_idempotent_retry_returns_the_job_and_charges_nothing(client, ns) -> None:
    gate = admission(client, ns, Rule("per_user", bucket(10)))
    first = await gate.admit(SPEC, ctx(), None, job_id="job-1", now_ms=T0)
    again = await gate.admit(SPEC, ctx(), None, job_id="job-1", now_ms=T0)
    assert (first.outcome, again.outcome) == (Outcome.ADMITTED, Outcome.DUPLICATE)
    assert first.job_id == again.job_id == "job-1"
    assert again.rules[0].remaining == first.rules[0].remaining == 9
    assert await client.llen(queued_key(gate)) == 1


# --------------------------------------------------------------------------- deny cache


def refusal(name: str = "r", retry_ms: int = 1_000) -> RuleResult:
    policy = bucket(1).policy()
    return RuleResult(name, policy, False, False, 0, retry_ms, retry_ms)


def test_deny_cache_expires_respects_cost_and_stays_bounded() -> None:
    cache = DenyCache(max_keys=2)
    cache.remember("alice", refusal(retry_ms=1_000), cost=2, sent_at=100.0)
    assert cache.lookup("r", "alice", 2, 100.5) is not None
    assert cache.lookup("r", "alice", 3, 100.5) is not None  # heavier: refused too
    assert cache.lookup("r", "alice", 1, 100.5) is None  # lighter may fit: ask Redis
    assert cache.lookup("r", "alice", 2, 101.0) is None  # Redis's deadline has come
    for user in ("a", "b", "c"):
        cache.remember(user, refusal(), cost=1, sent_at=200.0)
    assert len(cache) == 2 and cache.lookup("r", "a", 1, 200.1) is None  # oldest dropped


async def test_deny_cache_answers_a_blocked_key_without_redis(private_redis, ns) -> None:
    client = connect(RedisSettings(url=private_redis.url))
    queue = SaqQueue(SaqQueue.Config(name=ns.queue))
    rule = Rule("per_user", bucket(3, block=5, refill=3, period=1))
    gate = Admission(client, [rule], queue, ns.prefix, deny_cache=DenyCache(100))
    sync = private_redis.client()
    try:
        outcomes = [(await gate.admit(SPEC, ctx(), None)).outcome for _ in range(4)]
        assert outcomes == [Outcome.ADMITTED] * 3 + [Outcome.REFUSED]
        sync.config_resetstat()
        refused = [await gate.admit(SPEC, ctx(), None) for _ in range(200)]
        assert all(d.outcome is Outcome.REFUSED and d.cached for d in refused)
        assert 4_000 < refused[-1].rules[0].retry_ms <= 5_000  # the block's remaining time
        stats = sync.info("commandstats")
        assert not any(name in stats for name in ("cmdstat_evalsha", "cmdstat_eval"))
        # another user is unaffected and still asks Redis
        other = await gate.admit(SPEC, ctx("bob"), None)
        assert other.outcome is Outcome.ADMITTED and not other.cached
        assert sync.info("commandstats")["cmdstat_evalsha"]["calls"] == 1
        assert sync.llen(f"saq:{ns.queue}:queued") == 4
    finally:
        sync.close()
        await client.aclose()


async def test_a_request_with_a_job_id_is_never_answered_from_the_deny_cache(client, ns) -> None:
    rule = Rule("per_user", bucket(2))
    config = SaqQueue.Config(name=ns.queue)
    gate = admission_on(client, ns, [rule], config, deny_cache=DenyCache(100))
    assert (await gate.admit(SPEC, ctx(), None, job_id="job-1")).outcome is Outcome.ADMITTED
    assert (await gate.admit(SPEC, ctx(), None)).outcome is Outcome.ADMITTED  # the last token
    assert not (await gate.admit(SPEC, ctx(), None)).cached  # Redis refuses; now it is cached
    assert (await gate.admit(SPEC, ctx(), None)).cached
    # a retry of an admitted job replays it, however far over the limit its user is
    replay = await gate.admit(SPEC, ctx(), None, job_id="job-1")
    assert (replay.outcome, replay.job_id, replay.cached) == (Outcome.DUPLICATE, "job-1", False)
    # a new job id is refused too, but by Redis
    fresh = await gate.admit(SPEC, ctx(), None, job_id="job-2")
    assert (fresh.outcome, fresh.cached) == (Outcome.REFUSED, False)
    assert await client.llen(queued_key(gate)) == 2


# --------------------------------------------------------------------------- client IP


@pytest.mark.parametrize(
    ("peer", "forwarded", "client_ip"),
    [
        ("198.51.100.1", "1.2.3.4", "198.51.100.1"),  # untrusted peer: header ignored
        ("10.0.0.5", "1.2.3.4", "1.2.3.4"),  # trusted proxy vouches for the client
        ("10.0.0.5", "6.6.6.6, 1.2.3.4", "1.2.3.4"),  # what the client wrote is not reached
        ("10.0.0.5", "1.2.3.4, 10.0.0.9", "1.2.3.4"),  # a chain of trusted proxies
        ("10.0.0.5", "10.0.0.7, 10.0.0.9", "10.0.0.7"),  # all trusted: the leftmost
        ("10.0.0.5", "not-an-ip", "10.0.0.5"),  # malformed: the last vouched address
        ("::ffff:10.0.0.5", "2001:db8::1", "2001:db8::1"),  # IPv4-mapped peer
        ("10.0.0.5", None, "10.0.0.5"),
    ],
)
def test_client_address_trusts_only_configured_proxies(peer, forwarded, client_ip) -> None:
    resolver = ClientAddress([ip_network("10.0.0.0/8")])
    assert resolver.resolve(peer, forwarded) == client_ip


def test_without_trusted_proxies_the_peer_is_the_client() -> None:
    assert ClientAddress([]).resolve("198.51.100.1", "1.2.3.4") == "198.51.100.1"


async def test_fixed_window_and_token_bucket_rules_mix_in_one_policy(client, ns) -> None:
    window = FixedWindow(FixedWindow.Config(points=2, duration=10, block_duration=0))
    gate = admission(client, ns, Rule("window", window), Rule("bucket", bucket(5)))
    outcomes = [(await gate.admit(SPEC, ctx(), None, now_ms=T0)).outcome for _ in range(3)]
    assert outcomes == [Outcome.ADMITTED, Outcome.ADMITTED, Outcome.REFUSED]
    state = await client.hgetall(gate.rule_keys(ctx())[1])
    assert float(state[b"tokens"]) == 3  # the bucket paid for the two admitted only


async def test_a_concurrency_slot_lost_without_finishing_frees_after_its_lease(client, ns) -> None:
    slots = Concurrency(Concurrency.Config(limit=1, lease=10))
    gate = admission(client, ns, Rule("running", slots))
    assert (await gate.admit(SPEC, ctx(), None, now_ms=T0)).outcome is Outcome.ADMITTED
    refused = await gate.admit(SPEC, ctx(), None, now_ms=T0 + 9_999)
    assert refused.outcome is Outcome.REFUSED and refused.rules[0].retry_ms == 1_000
    assert (await gate.admit(SPEC, ctx(), None, now_ms=T0 + 10_000)).outcome is Outcome.ADMITTED
    assert await client.zcard(gate.rule_keys(ctx())[0]) == 1  # the lapsed slot was dropped


async def test_a_replay_under_a_concurrency_rule_reports_the_slots_as_they_are(client, ns) -> None:
    gate = admission(client, ns, Rule("running", Concurrency(Concurrency.Config(limit=2))))
    first = await gate.admit(SPEC, ctx(), None, job_id="job-1", now_ms=T0)
    again = await gate.admit(SPEC, ctx(), None, job_id="job-1", now_ms=T0)
    assert again.outcome is Outcome.DUPLICATE
    assert first.rules[0].remaining == again.rules[0].remaining == 1  # no second slot counted
    assert again.rules[0].allowed
