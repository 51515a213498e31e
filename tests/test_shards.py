"""Queue shards: every admission's keys in one hash slot, jobs spread over shards, one
user's jobs in one shard and in order, exact per-user limits, and a worker and the
job API that see every shard.

The slot checks run on the embedded fakeredis (only the keys matter); the rest runs
in-process on the real Redis, with shards=3.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from fakeredis import FakeAsyncRedis, FakeServer
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from taskhub import Task, TaskHandler
from taskhub.builtin.limiters.token_bucket import TokenBucket
from taskhub.builtin.saq.queue import SaqQueue
from taskhub.builtin.tasks.log_completion import LogCompletion
from taskhub.components import Limiter, TaskSpec
from taskhub.config.models import RedisSettings
from taskhub.errors import ConfigError
from taskhub.hub.kernel import Hub
from taskhub.hub.plugins import load_plugins
from taskhub.jobs import AbortOutcome, JobStatus
from taskhub.limits.admin import LimitsAdmin
from taskhub.limits.admission import Admission, Outcome
from taskhub.limits.execution import ExecutionGate
from taskhub.limits.policy import RequestContext, Rule
from taskhub.store.clients import connect
from taskhub.store.sharding import SHARD_BY, Shards
from tests.support.backends import config_on, settings_on
from tests.support.configs import config_dict, write_config
from tests.support.jobs import eventually, working
from tests.support.namespaces import Namespace
from tests.support.processes import wait_until

CLOCKS_APART = timedelta(milliseconds=5)
SPEC = TaskSpec("log_completion", LogCompletion(LogCompletion.Config()))
USERS = [f"user-{n}" for n in range(200)] + ["{tag}", "a:b", "ü", "x" * 256, ""]
SOURCES = ("user", "ip", "constant", "task", "header:X-Api-Key")


def ctx(user: str, ip: str = "203.0.113.9") -> RequestContext:
    return RequestContext(user, SPEC.name, ip, {"X-Api-Key": "k{1}"})


# ----------------------------------------------------------------------- key layout


def test_a_user_has_one_stable_home_and_ids_name_their_shard() -> None:
    shards = Shards(8, "user", "tasks")
    homes = Counter(shards.shard_for(user) for user in USERS)
    assert set(homes) == set(range(8))  # 205 users reach every shard
    assert all(Shards(8, "user", "tasks").shard_for(u) == shards.shard_for(u) for u in USERS)
    assert shards.tag(3).startswith("{tasks.3") and shards.tag(3).endswith("}")
    assert shards.shard_of(shards.job_id("abc", 5)) == 5
    for stranger in ("abc", "abc-8", "abc-05", "abc-", "abc-²", "-"):
        assert shards.shard_of(stranger) is None
    turns = Shards(3, "round_robin", "tasks")
    assert [turns.place("u", None) for _ in range(6)] == [0, 1, 2, 0, 1, 2]
    assert turns.place("u", "id-1") == turns.place("other", "id-1")  # a retry finds its shard


@pytest.mark.parametrize("name", ["tasks", "bench", "orders-eu", "q"])
@pytest.mark.parametrize("count", [1, 2, 3, 6, 7, 16])
def test_shards_spread_evenly_over_the_slot_space_so_over_the_masters(
    name: str, count: int
) -> None:
    """Shard i's slot lies in the i-th equal part of the slots: with masters on even
    contiguous ranges (as redis-cli --cluster create makes them), 6 shards on 3 masters
    are 2 on each, whatever the queue's name."""
    shards = Shards(count, name=name, tagged=True)
    tags = [shards.tag(i) for i in range(count)]
    for i, tag in enumerate(tags):
        assert i * 16384 // count <= key_slot(tag.encode()) < (i + 1) * 16384 // count
        assert tag.startswith(f"{{{name}.{i}") and tag.endswith("}")
    assert tags == [Shards(count, name=name, tagged=True).tag(i) for i in range(count)]
    masters = [(0, 5460), (5461, 10922), (10923, 16383)]  # redis-cli's split of 3 masters
    per_master = Counter(
        next(m for m, (low, high) in enumerate(masters) if low <= key_slot(t.encode()) <= high)
        for t in tags
    )
    if count % len(masters) == 0:
        assert sorted(per_master.values()) == [count // len(masters)] * len(masters)


def test_one_shard_keeps_every_key_as_it_was() -> None:
    queue = SaqQueue(SaqQueue.Config(name="tasks"))
    job = queue.prepare(SPEC, "u1", None, "j1")
    assert job.keys == [
        "saq:tasks:incomplete",
        "saq:job:tasks:j1",
        "saq:tasks:queued",
        "saq:abort:j1",
    ]
    assert job.job_id == "j1"
    gate = Admission(FakeAsyncRedis(), [Rule("tb", bucket(20))], queue, "taskhub")
    assert gate.rule_keys(ctx("u1")) == ["taskhub:tb:tb:u1"]
    assert not gate.split


class Recording(FakeAsyncRedis):
    """Embedded Redis that notes the keys of every script call."""

    def __init__(self) -> None:
        super().__init__(server=FakeServer())
        self.calls: list[tuple[str, ...]] = []

    async def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any:  # type: ignore[override]
        self.calls.append(tuple(str(k) for k in keys_and_args[:numkeys]))
        return await super().evalsha(sha, numkeys, *keys_and_args)


def every_strategy(*, holds_slot: bool = True, executable: bool = False) -> list[Limiter]:
    registry = load_plugins(None, [], entry_points=False)
    limiters = []
    for name in registry.names("limiter"):
        cls = registry.get("limiter", name)
        limiter: Limiter = cls(cls.Config())  # type: ignore[assignment]
        if (holds_slot or not limiter.holds_slot) and (limiter.executable or not executable):
            limiters.append(limiter)
    return limiters


def one_slot(keys: tuple[str, ...]) -> bool:
    return len({key_slot(key.encode()) for key in keys}) == 1


@pytest.mark.parametrize("by", ["user", "round_robin"])
async def test_every_admission_keeps_its_keys_in_one_slot(by: str) -> None:
    queue = SaqQueue(SaqQueue.Config(name="tasks", shards=5, shard_by=by))
    strategies = every_strategy(holds_slot=by == "user")  # in turn needs no held slots
    rules = [Rule(f"{s.name}-user", s) for s in strategies]
    rules += [Rule.keyed(f"tb-{source}", bucket(10**6), source) for source in SOURCES]
    redis = Recording()
    gate = Admission(redis, rules, queue, "taskhub", shards=queue.layout())
    assert gate.split is (by == "round_robin")
    homes = set()
    for user in USERS:
        redis.calls.clear()
        decision = await gate.admit(SPEC, ctx(user), None)
        assert decision.outcome is Outcome.ADMITTED, user
        assert redis.calls and all(one_slot(keys) for keys in redis.calls), redis.calls
        shard = queue.shards.shard_of(decision.job_id)
        if by == "user":
            assert shard == queue.shards.shard_for(user)
            assert len(set(redis.calls)) == 1  # limiter and job: one script (maybe loaded first)
        homes.add(shard)
    assert homes == set(range(5))


async def test_execution_limits_count_in_the_users_home_shard() -> None:
    """As at admission: one slot per decision, and one count per user wherever his
    jobs were placed (with shard_by round_robin, anywhere)."""
    shards = Shards(4, "user", "tasks")
    rules = [Rule.keyed(f"{s.name}-user", s, "user") for s in every_strategy(executable=True)]
    rules += [Rule.keyed(f"tb-{k}", bucket(10**6), k) for k in ("task", "constant")]
    redis = Recording()
    gate = ExecutionGate(redis, rules, "taskhub", "closed", shards)
    for user in USERS[:50]:
        shard = shards.shard_for(user)
        assert await gate.wait_ms(SPEC.name, user, "j", 1) == 0
        (keys,) = redis.calls[-1:]
        assert one_slot(keys) and key_slot(shards.tag(shard).encode()) == key_slot(keys[0].encode())


def test_in_turn_refuses_a_strategy_that_holds_slots(tmp_path: Path) -> None:
    ns = Namespace.new()
    config = config_dict(
        ns,
        "redis://127.0.0.1:6379",
        limiter=None,
        limits={"admission": [{"type": "concurrency", "limit": 2}]},
        queue={"type": "saq", "name": ns.queue, "shards": 3, "shard_by": "round_robin"},
    )
    with pytest.raises(ConfigError, match=r"needs queue\.shard_by: user"):
        Hub.from_file(write_config(tmp_path, config))


def test_rules_not_keyed_by_user_count_per_shard(tmp_path: Path) -> None:
    ns = Namespace.new()
    rules = [{"type": "token_bucket", "name": "per_ip", "key": "ip"}, {"type": "gcra"}]
    config = config_dict(
        ns,
        "redis://127.0.0.1:6379",
        limiter=None,
        limits={"admission": rules},
        queue={"type": "saq", "name": ns.queue, "shards": 4},
    )
    hub = Hub.from_file(write_config(tmp_path, config))
    assert hub.per_shard_rules(hub.rules) == ["per_ip"]


# ----------------------------------------------------------------------- real Redis


def bucket(capacity: int) -> TokenBucket:
    return TokenBucket(TokenBucket.Config(capacity=capacity, refill=1, period=3600, block=0))


@pytest.fixture(params=["single", "cluster"])
def settings(request: pytest.FixtureRequest) -> RedisSettings:
    """The shared single Redis, or the test cluster."""
    return settings_on(request.param, request)


@pytest.fixture
async def client(settings: RedisSettings) -> AsyncIterator[aioredis.Redis]:
    conn = connect(settings)
    yield conn
    await conn.aclose()


def sharded(ns: Namespace, client: aioredis.Redis, by: str = "user", **options: Any) -> SaqQueue:
    """Three shards, laid out as the hub lays them out for ``client``'s kind of Redis."""
    queue = SaqQueue(SaqQueue.Config(name=ns.queue, shards=3, shard_by=by, **options))
    queue.layout(cluster=isinstance(client, RedisCluster))
    return queue


async def opened(queue: SaqQueue, client: aioredis.Redis) -> SaqQueue:
    await queue.open(SimpleNamespace(redis=client))  # type: ignore[arg-type]
    return queue


async def queued(client: aioredis.Redis, queue: SaqQueue) -> list[list[str]]:
    """Each shard's waiting line, as job ids."""
    lines = []
    for shard in range(queue.shards.count):
        ids = await client.lrange(f"saq:{queue.shards.tag(shard)}:queued", 0, -1)
        lines.append([raw.decode().rsplit(":", 1)[-1] for raw in ids])
    return lines


async def test_users_keep_to_their_shard_in_order_with_exact_limits(client, ns) -> None:
    queue = await opened(sharded(ns, client), client)
    gate = Admission(
        client, [Rule("per_user", bucket(20))], queue, ns.prefix, shards=queue.layout()
    )
    users = [f"u{n}" for n in range(9)]
    admitted: dict[str, list[str]] = {user: [] for user in users}
    for _ in range(20):
        for user in users:
            decision = await gate.admit(SPEC, ctx(user), None)
            assert decision.outcome is Outcome.ADMITTED
            admitted[user].append(decision.job_id)
    for user in users:
        assert (await gate.admit(SPEC, ctx(user), None)).outcome is Outcome.REFUSED
    lines = await queued(client, queue)
    assert sum(1 for line in lines if line) > 1  # spread over shards
    for user, ids in admitted.items():
        line = lines[queue.shards.shard_for(user)]
        assert [job for job in line if job in set(ids)] == ids  # all there, in order
    assert await queue.depth() == {"queued": 180, "active": 0, "incomplete": 180, "dead": 0}


async def test_in_turn_spreads_one_user_and_keeps_his_limit_exact(client, ns) -> None:
    queue = sharded(ns, client, "round_robin")
    gate = Admission(
        client, [Rule("per_user", bucket(20))], queue, ns.prefix, shards=queue.layout()
    )
    outcomes = [(await gate.admit(SPEC, ctx("alice"), None)).outcome for _ in range(21)]
    assert outcomes == [Outcome.ADMITTED] * 20 + [Outcome.REFUSED]
    assert [len(line) for line in await queued(client, queue)] == [7, 7, 6]
    home = queue.shards.tag(queue.shards.shard_for("alice"))
    homes = [f"{ns.prefix}:{queue.shards.tag(i)}:per_user:tb:alice" for i in range(3)]
    assert [await client.exists(key) for key in homes] == [int(key.count(home)) for key in homes]
    replay = await gate.admit(SPEC, ctx("bob"), None, job_id="same")
    again = await gate.admit(SPEC, ctx("bob"), None, job_id="same")
    assert (replay.outcome, again.outcome) == (Outcome.ADMITTED, Outcome.DUPLICATE)
    assert replay.job_id == again.job_id


async def test_limits_show_and_reset_read_a_users_home_shard(client, ns) -> None:
    queue = sharded(ns, client)
    rules = [Rule("per_user", bucket(20))]
    gate = Admission(client, rules, queue, ns.prefix, shards=queue.layout())
    for _ in range(3):
        await gate.admit(SPEC, ctx("alice"), None)
    admin = LimitsAdmin(client, rules, [], ns.prefix, shards=queue.layout())
    (state,) = await admin.show("alice")
    assert state.remaining == 17
    assert [k.key for k in state.keys] == gate.rule_keys(ctx("alice"))
    (reset,) = await admin.reset("alice")
    assert reset.deleted == 1
    assert (await admin.show("alice"))[0].remaining == 20


async def test_status_and_abort_find_a_job_in_any_shard(client, ns) -> None:
    queue = await opened(sharded(ns, client), client)
    gate = Admission(
        client, [Rule("per_user", bucket(20))], queue, ns.prefix, shards=queue.layout()
    )
    jobs = {user: (await gate.admit(SPEC, ctx(user), None)).job_id for user in USERS[:12]}
    assert {queue.shards.shard_of(job) for job in jobs.values()} == {0, 1, 2}
    for user, job_id in jobs.items():
        info = await queue.status(job_id)
        assert info is not None and (info.user_id, info.status) == (user, JobStatus.QUEUED)
    victim = jobs[USERS[0]]
    assert (await queue.abort(victim)).outcome is AbortOutcome.ABORTED
    assert (await queue.status(victim)).status is JobStatus.ABORTED  # type: ignore[union-attr]
    stem = victim.rsplit("-", 1)[0]
    for stranger in (stem, f"{stem}-9", "nothing-1"):
        assert await queue.status(stranger) is None
        assert (await queue.abort(stranger)).outcome is AbortOutcome.UNKNOWN
    assert (await queue.snapshot()).queued == 11


class Handler(TaskHandler):
    """Fails for users named ``bad-*``; notes the order it ran each user's jobs in."""

    name = "sharded"

    def __init__(self) -> None:
        super().__init__(TaskHandler.Config())
        self.ran: list[tuple[str, str]] = []

    async def run(self, task: Task) -> str:
        self.ran.append((task.user_id, task.job_id))
        if task.user_id.startswith("bad-"):
            raise ValueError("boom")
        return "ok"


@pytest.mark.parametrize("fairness", ["none", "user"])
async def test_a_worker_drains_every_shard_and_dead_letters_come_back(
    client, ns, settings, fairness
) -> None:
    # Fewer slots than shards: each slot must also look beyond its own shard.
    queue = await opened(sharded(ns, client, concurrency=2, fairness=fairness), client)
    gate = Admission(
        client, [Rule("per_user", bucket(20))], queue, ns.prefix, shards=queue.layout()
    )
    handler = Handler()
    spec = TaskSpec(Handler.name, handler, retries=1)
    bad: dict[int, str] = {}  # one failing user per shard
    for n in range(100):
        bad.setdefault(queue.shards.shard_for(f"bad-{n}"), f"bad-{n}")
    users = [f"u{n}" for n in range(6)] + sorted(bad.values())
    jobs = [(await gate.admit(spec, ctx(user), None)).job_id for user in users for _ in range(3)]

    async def settled() -> bool:
        depth = await queue.depth()
        return depth["incomplete"] == 0 and depth["dead"] == 9

    async with working(queue, spec, settings):
        await eventually(settled)
    assert sorted(job for _, job in handler.ran) == sorted(jobs)
    dead = await queue.dead_letters()
    assert len(dead) == 9 and {queue.shards.shard_of(d.job_id) for d in dead} == {0, 1, 2}
    # Oldest first, by the time each became a dead letter (its score, Redis's clock);
    # completed_at is the worker's clock, a millisecond apart at most on one machine.
    times = [d.completed_at for d in dead]
    assert all(a <= b + CLOCKS_APART for a, b in itertools.pairwise(times)), times  # type: ignore[operator]
    assert len(await queue.dead_letters(5)) == 5
    snapshot = await queue.snapshot()
    assert (snapshot.dead, len(snapshot.recent_failures)) == (9, 5)
    assert (snapshot.queued, snapshot.active, snapshot.scheduled) == (0, 0, 0)
    chosen = [dead[0].job_id, dead[-1].job_id]
    strangers = ["no-such-job-1", "names-no-shard"]  # a shard with no such dead letter; none
    assert sorted(await queue.retry_dead([*chosen, *strangers])) == sorted(chosen)
    assert (await queue.depth())["queued"] == 2
    assert await queue.purge_dead() == 7


@pytest.mark.parametrize(("on", "by"), [("single", "user"), *(("cluster", by) for by in SHARD_BY)])
def test_a_sharded_taskhub_run_over_http(
    tmp_path: Path, ns: Namespace, spawn: Any, on: str, by: str, request: pytest.FixtureRequest
) -> None:
    """The whole process: the pipelined admission, the worker, GET and DELETE /task."""
    queue = {"type": "saq", "name": ns.queue, "shards": 3, "shard_by": by}
    limiter = {"type": "token_bucket", "capacity": 20, "refill": 1, "period": 3600}
    process = spawn({**config_on(on, ns, request), "queue": queue, "limiter": limiter})
    users = [f"user{n}" for n in range(6)]
    responses = [post(process.url, user) for _ in range(20) for user in users]
    assert {r.status_code for r in responses} == {200}
    assert [post(process.url, user).status_code for user in users] == [429] * 6
    job_ids = [r.json()["job_id"] for r in responses]
    assert {Shards(3).shard_of(job) for job in job_ids} == {0, 1, 2}
    assert wait_until(lambda: len(task_log(tmp_path)) == 120, timeout=30), process.output
    for job_id in job_ids[:: len(users) + 1]:
        body = httpx.get(f"{process.url}/task/{job_id}", timeout=10).json()
        assert body["status"] == "complete", body
    done = httpx.delete(f"{process.url}/task/{job_ids[0]}", timeout=10)
    assert (done.status_code, done.json()["job"]["status"]) == (409, "complete")
    stem = job_ids[0].rsplit("-", 1)[0]
    assert httpx.get(f"{process.url}/task/{stem}", timeout=10).status_code == 404


def post(url: str, user: str) -> httpx.Response:
    return httpx.post(f"{url}/task", json={"user_id": user}, timeout=10)


def task_log(directory: Path) -> list[str]:
    path = directory / "task.log"
    return path.read_text().splitlines() if path.exists() else []
