"""``LimitsAdmin``: show and reset one key's state for every rule, on the real Redis.

These use the real Redis clock (``show`` reads it), with rules that refill so slowly
that a test's few seconds change nothing.
"""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from helpers import Namespace
from test_policies import SPEC, bucket, ctx

from taskhub.admission import Admission, Outcome
from taskhub.builtin.concurrency import Concurrency
from taskhub.builtin.fixed_window import FixedWindow
from taskhub.builtin.saq_queue import SaqQueue
from taskhub.deny_cache import DenyCache
from taskhub.execution_limits import ExecutionGate
from taskhub.limits_admin import LimitsAdmin, UnknownRule
from taskhub.policy import Rule

SLOW = {"refill": 1, "period": 3600}  # one token an hour: nothing refills during a test


def policy() -> tuple[list[Rule], list[Rule]]:
    admission = [
        Rule("per_user", bucket(5, **SLOW)),
        Rule.keyed("per_ip", bucket(10, **SLOW), "ip"),
        Rule.keyed(
            "overall", FixedWindow(FixedWindow.Config(points=100, duration=600)), "constant"
        ),
        Rule("running", Concurrency(Concurrency.Config(limit=6))),
    ]
    execution = [Rule("runs", bucket(2, **SLOW))]
    return admission, execution


class Setup:
    def __init__(self, client: aioredis.Redis, ns: Namespace, cache: DenyCache | None = None):
        admission, execution = policy()
        queue = SaqQueue(SaqQueue.Config(name=ns.queue))
        self.gate = Admission(client, admission, queue, ns.prefix, deny_cache=cache)
        self.runs = ExecutionGate(client, execution, ns.prefix, "closed")
        self.admin = LimitsAdmin(client, admission, execution, ns.prefix, deny_cache=cache)

    async def submit(self, user: str, times: int = 1, ip: str = "203.0.113.7") -> list[Outcome]:
        return [(await self.gate.admit(SPEC, ctx(user, ip), None)).outcome for _ in range(times)]


@pytest.fixture
def setup(client, ns) -> Setup:
    return Setup(client, ns)


def by_rule(states) -> dict[str, dict]:
    return {s.rule.name: s.to_json() for s in states}


def timeless(state: dict[str, dict]) -> dict[str, dict]:
    """``state`` without what the clock changes: reset, retry-after and key TTLs."""
    out = {}
    for name, rule in state.items():
        kept = {k: v for k, v in rule.items() if k not in ("reset_ms", "retry_after_ms")}
        kept["redis_keys"] = [{**key, "ttl_ms": None} for key in rule["redis_keys"]]
        out[name] = kept
    return out


async def test_show_reports_each_rule_and_changes_nothing(setup, ns, sync_redis) -> None:
    assert await setup.submit("alice", 3) == [Outcome.ADMITTED] * 3
    assert await setup.submit("bob") == [Outcome.ADMITTED]
    for job in ("j1", "j2", "j3"):  # the execution rule allows 2, then defers
        await setup.runs.wait_ms(SPEC.name, "alice", job)
    before = ns.snapshot(sync_redis)
    ttl_key = f"{ns.prefix}:per_user:tb:alice"
    ttl_before = sync_redis.pttl(ttl_key)

    first = by_rule(await setup.admin.show("alice"))
    second = by_rule(await setup.admin.show("alice"))
    assert ns.snapshot(sync_redis) == before  # nothing charged, nothing written
    assert 0 <= ttl_before - sync_redis.pttl(ttl_key) < 2_000  # not extended
    assert timeless(first) == timeless(second)
    for name in first:  # what counts down, counted down only by the time between the calls
        for field in ("reset_ms", "retry_after_ms"):
            assert 0 <= first[name][field] - second[name][field] < 1_000, (name, field)

    assert list(first) == ["per_user", "per_ip", "overall", "running", "runs"]
    user = first["per_user"]
    assert (user["stage"], user["type"], user["by"], user["limit"]) == (
        "admission",
        "token_bucket",
        "user",
        5,
    )
    assert (user["remaining"], user["retry_after_ms"], user["used"]) == (2, 0, True)
    assert user["redis_keys"][0]["key"] == ttl_key and user["redis_keys"][0]["exists"]
    assert first["per_ip"]["remaining"] == 10 and not first["per_ip"]["used"]  # alice is no IP
    assert first["overall"]["remaining"] == 96 and first["overall"]["shared"]
    assert first["overall"]["redis_keys"][0]["key"] == f"{ns.prefix}:overall:fw:all"
    assert first["running"]["remaining"] == 3  # 3 jobs hold slots, none finished
    runs = first["runs"]
    assert (runs["stage"], runs["remaining"]) == ("execution", 0)
    assert runs["retry_after_ms"] > 3_000_000  # the next token is an hour away
    assert [k["key"] for k in runs["redis_keys"]] == [
        f"{ns.prefix}:runs:tb:alice",
        f"{ns.prefix}:runs:tb:alice:line",  # the third job waits in line
    ]
    assert all(k["exists"] for k in runs["redis_keys"])

    ip = by_rule(await setup.admin.show("203.0.113.7", rule="per_ip"))
    assert list(ip) == ["per_ip"] and ip["per_ip"]["remaining"] == 6


async def test_a_key_without_state_shows_full(setup) -> None:
    state = by_rule(await setup.admin.show("nobody"))
    for name in ("per_user", "per_ip", "running", "runs"):
        rule = state[name]
        assert (rule["remaining"], rule["retry_after_ms"], rule["used"]) == (
            rule["limit"],
            0,
            False,
        )
        assert all(
            k == {"key": k["key"], "exists": False, "ttl_ms": None} for k in rule["redis_keys"]
        )


async def test_show_reports_when_a_refused_key_may_pass(client, ns) -> None:
    rule = Rule("per_user", bucket(1, block=30, refill=1, period=5))
    gate = Admission(client, [rule], SaqQueue(SaqQueue.Config(name=ns.queue)), ns.prefix)
    admin = LimitsAdmin(client, [rule], [], ns.prefix)
    await gate.admit(SPEC, ctx("carol"), None)
    assert (await gate.admit(SPEC, ctx("carol"), None)).outcome is Outcome.REFUSED
    (state,) = await admin.show("carol")
    assert state.remaining == 0 and 29_000 < state.retry_ms <= 30_000  # the block, not the token


async def test_keys_are_escaped_as_admission_escapes_them(setup) -> None:
    user = "ann:{x}@example.com"
    await setup.submit(user)
    (state,) = await setup.admin.show(user, rule="per_user")
    assert state.used and state.remaining == 4
    assert [k.key for k in state.keys] == setup.gate.rule_keys(ctx(user))[:1]
    assert "%3A%7Bx%7D%40" in state.keys[0].key


async def test_reset_clears_the_keys_own_state_and_nobody_elses(setup, ns, sync_redis) -> None:
    await setup.submit("alice", 5)
    await setup.submit("bob", 2)
    for job in ("j1", "j2", "j3"):
        await setup.runs.wait_ms(SPEC.name, "alice", job)
    await setup.runs.wait_ms(SPEC.name, "bob", "j4")
    assert await setup.submit("alice") == [Outcome.REFUSED]
    bob_before = {k: v for k, v in ns.snapshot(sync_redis).items() if b"bob" in k}

    resets = {r.rule.name: r.to_json() for r in await setup.admin.reset("alice")}
    assert resets == {
        "per_user": {"rule": "per_user", "stage": "admission", "deleted": 1},
        "per_ip": {"rule": "per_ip", "stage": "admission", "deleted": 0},
        "overall": {
            "rule": "overall",
            "stage": "admission",
            "kept": "shared by every key; name the rule to reset it",
        },
        "running": {
            "rule": "running",
            "stage": "admission",
            "kept": "slots held by unfinished jobs free as they finish; name the rule to free them",
        },
        "runs": {"rule": "runs", "stage": "execution", "deleted": 2},  # the bucket and its line
    }
    after = by_rule(await setup.admin.show("alice"))
    assert after["per_user"]["remaining"] == 5 and after["runs"]["remaining"] == 2
    assert after["overall"]["remaining"] == 93 and after["running"]["remaining"] == 1
    assert {k: v for k, v in ns.snapshot(sync_redis).items() if b"bob" in k} == bob_before
    assert by_rule(await setup.admin.show("bob"))["per_user"]["remaining"] == 3


async def test_reset_of_one_named_rule(setup, sync_redis, ns) -> None:
    await setup.submit("alice", 4)
    (only,) = await setup.admin.reset("alice", rule="per_user")
    assert (only.rule.name, only.deleted) == ("per_user", 1)
    assert sync_redis.zcard(f"{ns.prefix}:running:cc:alice") == 4  # other rules untouched
    # naming a rule resets what a reset of every rule keeps
    (shared,) = await setup.admin.reset("whoever", rule="overall")
    (slots,) = await setup.admin.reset("alice", rule="running")
    assert (shared.deleted, slots.deleted) == (1, 1)
    state = by_rule(await setup.admin.show("alice"))
    assert state["overall"]["remaining"] == 100 and state["running"]["remaining"] == 6


async def test_an_unknown_rule_lists_the_known_ones(setup) -> None:
    for call in (setup.admin.show, setup.admin.reset):
        with pytest.raises(UnknownRule) as caught:
            await call("alice", rule="per_usr")
        assert str(caught.value) == (
            "no rule named 'per_usr'; the rules are: per_user, per_ip, overall, running, runs"
        )


async def test_reset_forgets_the_key_in_the_deny_cache(client, ns) -> None:
    setup = Setup(client, ns, DenyCache(100))
    await setup.submit("dave", 5)
    refused = [(await setup.gate.admit(SPEC, ctx("dave"), None)) for _ in range(2)]
    assert refused[1].outcome is Outcome.REFUSED and refused[1].cached
    await setup.admin.reset("dave")
    decision = await setup.gate.admit(SPEC, ctx("dave"), None)
    assert decision.outcome is Outcome.ADMITTED and not decision.cached
