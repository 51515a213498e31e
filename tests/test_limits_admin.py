"""``LimitsAdmin``: show and reset one key's state for every rule, on the real Redis.

These use the real Redis clock (``show`` reads it), with rules that refill so slowly
that a test's few seconds change nothing.
"""

from __future__ import annotations

import json

import pytest
import redis.asyncio as aioredis

from taskhub.builtin.limiters.concurrency import Concurrency
from taskhub.builtin.limiters.fixed_window import FixedWindow
from taskhub.builtin.saq.queue import SaqQueue
from taskhub.hub.kernel import Hub
from taskhub.limits.admin import LimitsAdmin, UnknownRule
from taskhub.limits.admission import Admission, Outcome
from taskhub.limits.deny_cache import DenyCache
from taskhub.limits.execution import ExecutionGate
from taskhub.limits.policy import Rule
from tests.support.configs import config_dict, write_config
from tests.support.limiter_harness import SPEC, bucket, ctx
from tests.support.namespaces import Namespace
from tests.support.processes import free_port, run_cli

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
    for name in ("per_user", "per_ip", "overall", "running", "runs"):
        rule = state[name]
        assert rule["remaining"] == rule["limit"], name
        assert (rule["reset_ms"], rule["retry_after_ms"], rule["used"]) == (0, 0, False), name
        for key in rule["redis_keys"]:
            assert (key["exists"], key["ttl_ms"]) == (False, None)


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


# --------------------------------------------------------------------------- the CLI

CLI_LIMITS = {
    "admission": [
        {"name": "per_user", "type": "token_bucket", "capacity": 5, **SLOW, "block": 0},
        {"name": "overall", "key": "constant", "type": "fixed_window", "points": 100},
    ],
    "execution": [{"name": "runs", "type": "gcra", "max_burst": 1, "rate": 1, "period": 60}],
}


def cli_config(tmp_path, ns, redis_url, limits=CLI_LIMITS, name="config.yaml") -> tuple[str, Hub]:
    config = config_dict(ns, redis_url, limits=limits)
    del config["limiter"]
    path = write_config(tmp_path, config, name)
    return str(path), Hub.from_file(path)


async def test_cli_shows_and_resets_a_key(tmp_path, ns, redis_url, client) -> None:
    path, hub = cli_config(tmp_path, ns, redis_url)
    gate = Admission(client, hub.rules, hub.queue, ns.prefix)
    for user in ("alice", "alice", "alice", "bob"):
        await gate.admit(SPEC, ctx(user), None)

    shown = run_cli(["limits", "show", path, "alice"], tmp_path)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].split() == [
        "RULE", "STAGE", "TYPE", "BY", "LIMIT", "REMAINING", "RESET", "NEXT", "REQUEST"
    ]  # fmt: skip
    assert lines[1].split()[:6] == ["per_user", "admission", "token_bucket", "user", "5", "2"]
    assert lines[1].endswith("admitted")
    assert lines[2].split()[:6] == ["overall", "admission", "fixed_window", "constant", "100", "96"]
    assert lines[3].split()[:6] == ["runs", "execution", "gcra", "user", "2", "2"]
    assert lines[5].split() == ["REDIS", "KEY", "TTL"]
    assert lines[6].startswith(f"{ns.prefix}:per_user:tb:alice ")
    assert f"{ns.prefix}:runs:gcra:alice:line  absent" in shown.stdout

    as_json = run_cli(["limits", "show", path, "alice", "--json", "--rule", "per_user"], tmp_path)
    body = json.loads(as_json.stdout)
    assert body["key"] == "alice" and [r["remaining"] for r in body["rules"]] == [2]

    reset = run_cli(["limits", "reset", path, "alice"], tmp_path)
    assert reset.returncode == 0, reset.stderr
    assert reset.stdout.splitlines() == [
        "per_user  admission  deleted 1 key(s)",
        "overall   admission  kept: shared by every key; "
        "name the rule to reset it (--rule overall)",
        "runs      execution  deleted 0 key(s)",
        "deleted 1 key(s) for 'alice'",
    ]
    after = json.loads(run_cli(["limits", "show", path, "alice", "--json"], tmp_path).stdout)
    assert [r["remaining"] for r in after["rules"]] == [5, 96, 2]
    bob = json.loads(run_cli(["limits", "show", path, "bob", "--json"], tmp_path).stdout)
    assert bob["rules"][0]["remaining"] == 4

    reset = run_cli(["limits", "reset", path, "anyone", "--rule", "overall"], tmp_path)
    assert reset.stdout.splitlines()[-1] == "deleted 1 key(s) for 'anyone'"


async def test_cli_errors_are_one_line_with_the_right_exit_code(tmp_path, ns, redis_url) -> None:
    path, _ = cli_config(tmp_path, ns, redis_url)
    unknown = run_cli(["limits", "reset", path, "alice", "--rule", "per_usr"], tmp_path)
    assert unknown.returncode == 2
    assert unknown.stderr.strip().splitlines()[-1] == (
        "taskhub: error: no rule named 'per_usr'; the rules are: per_user, overall, runs"
    )

    down_path, _ = cli_config(tmp_path, ns, f"redis://127.0.0.1:{free_port()}/0", name="down.yaml")
    unreachable = run_cli(["limits", "show", down_path, "alice"], tmp_path)
    assert unreachable.returncode == 1
    assert unreachable.stderr.startswith("taskhub: error: Redis is unreachable: ")
    assert len(unreachable.stderr.splitlines()) == 1
    debug = run_cli(["limits", "show", down_path, "alice", "--debug"], tmp_path)
    assert debug.returncode == 1 and "Traceback" in debug.stderr

    memory = str(write_config(tmp_path, {"redis": {"url": "memory://"}}, "memory.yaml"))
    embedded = run_cli(["limits", "show", memory, "alice"], tmp_path)
    assert embedded.returncode == 2
    assert "redis.url is memory://, whose rate-limit counters live only inside" in embedded.stderr
    assert "Traceback" not in embedded.stderr

    bare, _ = cli_config(tmp_path, ns, redis_url, limits={"admission": []}, name="bare.yaml")
    nothing = run_cli(["limits", "show", bare, "alice"], tmp_path)
    assert nothing.returncode == 0
    assert nothing.stdout == f"{bare} has no rate limits: " + (
        "limits.admission and limits.execution are empty\n"
    )


def test_the_cli_and_the_server_look_where_the_rules_keep_their_state(tmp_path, ns) -> None:
    limits = {**CLI_LIMITS, "redis_url": "redis://127.0.0.1:1/0"}
    _, hub = cli_config(tmp_path, ns, "redis://127.0.0.1:2/0", limits=limits)
    admin = hub.build_limits_admin()  # connects lazily: nothing is reached here
    assert admin.redis is hub.limiter_redis and hub.redis is None
    memory = {**limits, "redis_url": "memory://"}
    path, _ = cli_config(tmp_path, ns, "redis://127.0.0.1:2/0", limits=memory, name="m.yaml")
    embedded = run_cli(["limits", "show", path, "alice"], tmp_path)
    assert embedded.returncode == 2 and "limits.redis_url is memory://" in embedded.stderr
