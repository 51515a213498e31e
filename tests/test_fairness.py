"""Fair scheduling between users, priorities and delayed jobs, on the real Redis and the cluster.

Takes are read straight from the queue (``take(0, block=False)``, what a worker's
slot does) where the order is the point; a worker runs in this process where the
point is that jobs run (the issue's scenario, an upgrade, delays).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from taskhub import Task, TaskHandler
from taskhub.builtin.limiters.token_bucket import TokenBucket
from taskhub.builtin.saq.queue import SaqQueue
from taskhub.builtin.saq.redis_queue import HardenedRedisQueue
from taskhub.components import TaskSpec
from taskhub.config.models import RedisSettings
from taskhub.jobs import AbortOutcome, JobStatus
from taskhub.limits.admission import Admission, Outcome
from taskhub.limits.policy import RequestContext, Rule
from taskhub.store.clients import connect
from tests.support.backends import config_on, settings_on
from tests.support.configs import write_config
from tests.support.jobs import eventually, store_queued, working
from tests.support.namespaces import Namespace
from tests.support.processes import run_cli, wait_until


class Recorder(TaskHandler):
    """Notes when each job started (monotonic s), and sleeps ``seconds``."""

    name = "recorder"

    def __init__(self, seconds: float = 0.0) -> None:
        super().__init__(TaskHandler.Config())
        self.seconds = seconds
        self.started: list[tuple[str, str, float]] = []

    async def run(self, task: Task) -> str:
        self.started.append((task.user_id, task.job_id, time.monotonic()))
        if self.seconds:
            await asyncio.sleep(self.seconds)
        return "ok"


SPEC = TaskSpec(Recorder.name, Recorder())


@pytest.fixture(params=["single", "cluster"])
def settings(request: pytest.FixtureRequest) -> RedisSettings:
    return settings_on(request.param, request)


@pytest.fixture
async def client(settings: RedisSettings) -> AsyncIterator[aioredis.Redis]:
    conn = connect(settings)
    yield conn
    await conn.aclose()


def saq(ns: Namespace, client: aioredis.Redis, **options: Any) -> SaqQueue:
    """A queue laid out as the hub lays it out for ``client``'s kind of Redis."""
    queue = SaqQueue(SaqQueue.Config(name=ns.queue, **options))
    queue.layout(cluster=isinstance(client, RedisCluster))
    return queue


async def opened(queue: SaqQueue, client: aioredis.Redis) -> SaqQueue:
    await queue.open(SimpleNamespace(redis=client))  # type: ignore[arg-type]
    return queue


def gate(client: aioredis.Redis, queue: SaqQueue, ns: Namespace) -> Admission:
    bucket = TokenBucket(TokenBucket.Config(capacity=10_000, refill=1, period=3600, block=0))
    return Admission(client, [Rule("per_user", bucket)], queue, ns.prefix, shards=queue.layout())


def ctx(user: str) -> RequestContext:
    return RequestContext(user, SPEC.name, "203.0.113.9", {})


async def admit(admission: Admission, user: str, **options: Any) -> str:
    decision = await admission.admit(SPEC, ctx(user), None, **options)
    assert decision.outcome is Outcome.ADMITTED, decision
    return decision.job_id


async def takes(shard: HardenedRedisQueue, count: int = 1_000) -> list[str]:
    """Job ids in the order a worker takes them, until the line is empty."""
    taken = []
    for _ in range(count):
        found = await shard.take(0, block=False)
        if found is None:
            break
        taken.append(found[0].key)
    return taken


def shard(queue: SaqQueue) -> HardenedRedisQueue:
    return queue._queues()[0]


# ----------------------------------------------------------------------- order of takes


async def test_fairness_none_keeps_the_fifo_list_and_its_keys(client, ns) -> None:
    queue = await opened(saq(ns, client), client)
    admission = gate(client, queue, ns)
    jobs = [await admit(admission, user) for _ in range(5) for user in ("a", "b")]
    line = shard(queue)
    listed = await client.lrange(line._queued, 0, -1)
    assert [queue.shards.shard_of(j) for j in jobs] == [0] * 10
    assert [raw.decode().rsplit(":", 1)[-1] for raw in listed] == jobs
    for extra in ("ring", "prio", "backlog", "lined", "seq"):
        assert not await client.exists(line.namespace(extra)), extra
    assert await takes(line) == jobs
    assert (await queue.snapshot()).fairness == "none"


async def test_fairness_user_takes_round_robin_across_users(client, ns) -> None:
    queue = await opened(saq(ns, client, fairness="user"), client)
    admission = gate(client, queue, ns)
    heavy = [await admit(admission, "heavy") for _ in range(50)]
    light = await admit(admission, "light")
    other = [await admit(admission, "other") for _ in range(2)]
    assert (await queue.depth())["queued"] == 53
    snapshot = await queue.snapshot()
    assert snapshot.top_users == [("heavy", 50), ("other", 2), ("light", 1)]
    order = await takes(shard(queue))
    assert order[:6] == [heavy[0], light, other[0], heavy[1], other[1], heavy[2]]
    assert order[6:] == heavy[3:]  # then the only user left, in order
    depth = await queue.depth()
    assert (depth["queued"], depth["active"]) == (0, 53)
    line = shard(queue)
    assert not await client.exists(line.ring_key) and not await client.exists(line.backlog_key)


async def test_weights_give_a_user_that_many_takes_per_turn(client, ns) -> None:
    queue = await opened(saq(ns, client, fairness="user", weights={"big": 3}), client)
    await shard(queue).set_weights(queue.config.weights)
    admission = gate(client, queue, ns)
    big = [await admit(admission, "big") for _ in range(6)]
    small = [await admit(admission, "small") for _ in range(3)]
    order = await takes(shard(queue))
    assert order == [*big[:3], small[0], *big[3:], small[1], small[2]]
    await shard(queue).set_weights({"big": 1})  # back to the default
    assert not await client.exists(shard(queue).weights_key)


@pytest.mark.parametrize("fairness", ["none", "user"])
async def test_priority_orders_a_users_jobs_and_none_mode_the_whole_queue(
    client, ns, fairness
) -> None:
    queue = await opened(saq(ns, client, fairness=fairness), client)
    admission = gate(client, queue, ns)
    low = await admit(admission, "a", priority=-3)
    plain = [await admit(admission, "a") for _ in range(2)]
    high = await admit(admission, "a", priority=5)
    higher = await admit(admission, "a", priority=10)
    other = await admit(admission, "b", priority=-10)
    order = await takes(shard(queue))
    if fairness == "none":  # one line for all: priority first, then first come
        assert order == [higher, high, *plain, low, other]
        assert await client.llen(shard(queue)._queued) == 0
    else:  # users take turns; within a user, priority
        assert order == [higher, other, high, *plain, low]


async def test_an_idle_worker_wakes_at_once_for_a_job_of_another_priority(client, ns) -> None:
    """fairness none: idle workers wait on SAQ's list, and a job of another priority
    waits in ``prio``: the token it puts on the list wakes one at once, not when the
    idle wait ends; each take that leaves ``prio`` non-empty wakes the next."""
    queue = await opened(saq(ns, client), client)
    admission = gate(client, queue, ns)
    line = shard(queue)
    for priority in (5, -2):
        idle = [asyncio.create_task(line.take(1.8)) for _ in range(2)]  # two idle workers
        await asyncio.sleep(0.3)
        started = time.monotonic()
        jobs = [await admit(admission, "a", priority=priority) for _ in range(2)]
        found = await asyncio.gather(*idle)
        assert sorted(f[0].key for f in found if f) == sorted(jobs), found
        assert time.monotonic() - started < 1.5  # the idle waits last 1.8 s
    assert await takes(line) == []
    assert await client.llen(line._queued) == 0 and await client.llen(line._active) == 4
    assert (await queue.depth())["queued"] == 0
    plain = await admit(admission, "a")
    low = await admit(admission, "a", priority=-1)  # a token only into an empty list
    assert await client.llen(line._queued) == 1  # the plain job, no token
    assert await takes(line) == [plain, low]


async def test_a_tasks_default_priority_and_the_bodys_override(client, ns) -> None:
    queue = await opened(saq(ns, client), client)
    admission = gate(client, queue, ns)
    urgent = TaskSpec(Recorder.name, Recorder(), priority=4)
    plain = await admit(admission, "a")
    by_task = (await admission.admit(urgent, ctx("a"), None)).job_id
    lowered = (await admission.admit(urgent, ctx("a"), None, priority=-1)).job_id
    assert await takes(shard(queue)) == [by_task, plain, lowered]


async def test_abort_of_a_waiting_job_leaves_the_ring_consistent(client, ns) -> None:
    queue = await opened(saq(ns, client, fairness="user"), client)
    admission = gate(client, queue, ns)
    lone = await admit(admission, "lone")
    pair = [await admit(admission, "pair") for _ in range(2)]
    assert (await queue.abort(lone)).outcome is AbortOutcome.ABORTED
    assert (await queue.abort(pair[0])).outcome is AbortOutcome.ABORTED
    line = shard(queue)
    assert await client.lrange(line.ring_key, 0, -1) == [b"pair"]
    assert (await queue.depth())["queued"] == 1
    again = await admit(admission, "lone")
    assert await takes(line) == [pair[1], again]


async def test_a_user_lifted_by_an_idle_worker_that_died_keeps_his_turn(client, ns) -> None:
    queue = await opened(saq(ns, client, fairness="user"), client)
    admission = gate(client, queue, ns)
    first = [await admit(admission, "a") for _ in range(2)]
    other = await admit(admission, "b")
    line = shard(queue)
    # What an idle worker's wait does (BLMOVE ring waking), before it died.
    assert await client.lmove(line.ring_key, line.waking_key, "LEFT", "RIGHT") == b"a"
    assert await takes(line) == [first[0], other, first[1]]
    assert not await client.exists(line.waking_key) and not await client.exists(line.ring_key)


# ----------------------------------------------------------------------- workers


async def test_a_light_user_waits_behind_one_job_not_a_backlog(client, ns, settings) -> None:
    """The issue's scenario: 400 jobs of 20 ms from A, concurrency 4, then one from B."""
    handler = Recorder(0.02)
    spec = TaskSpec(Recorder.name, handler)
    queue = await opened(saq(ns, client, fairness="user", concurrency=4), client)
    admission = gate(client, queue, ns)
    for _ in range(400):
        await admit(admission, "A")
    async with working(queue, spec, settings):
        await eventually(lambda: asyncio.sleep(0, len(handler.started) >= 8))
        submitted = time.monotonic()
        light = await admit(admission, "B")
        await eventually(lambda: asyncio.sleep(0, any(j == light for _, j, _ in handler.started)))
    waited_ms = next(t for _, j, t in handler.started if j == light) - submitted
    before = [u for u, j, _ in handler.started].index("B")
    print(f"B started {waited_ms * 1000:.0f} ms after submitting, after {before} jobs of A")
    assert before < 40, before  # at most one of A's per free slot, generously


async def test_jobs_queued_by_the_previous_version_drain_with_fairness_on(
    client, ns, settings
) -> None:
    old = await opened(saq(ns, client), client)  # the previous layout: SAQ's list only
    legacy = [await store_queued(shard(old), function=SPEC.name, kwargs={"user_id": "u"})]
    legacy += [await admit(gate(client, old, ns), "v") for _ in range(3)]
    handler = Recorder()
    spec = TaskSpec(Recorder.name, handler)
    queue = await opened(saq(ns, client, fairness="user"), client)
    fresh = [await admit(gate(client, queue, ns), user) for user in ("w", "w", "x")]
    async with working(queue, spec, settings):
        await eventually(lambda: asyncio.sleep(0, len(handler.started) == 7))
        await eventually(lambda: _settled(queue))
    ran = [job for _, job, _ in handler.started]
    assert sorted(ran) == sorted(shard(queue).job_id(j).rsplit(":", 1)[-1] for j in legacy + fresh)


async def _settled(queue: SaqQueue) -> bool:
    return (await queue.depth())["incomplete"] == 0


async def test_the_sweep_puts_a_lost_job_back_first_in_its_users_line(client, ns) -> None:
    queue = await opened(saq(ns, client, fairness="user", heartbeat=1), client)
    admission = gate(client, queue, ns)
    first, second = [await admit(admission, "u") for _ in range(2)]
    line = shard(queue)
    taken = await line.take(0, block=False)  # taken, then its worker vanished
    assert taken is not None and taken[0].key == first
    await client.zadd(line.beats_key, {line.job_id(first): 1})  # its last beat: long ago
    assert await line.sweep(lock=1) == [line.job_id(first)]
    assert await client.lrange(line.ring_key, 0, -1) == [b"u"]
    assert await takes(line) == [first, second]


# ----------------------------------------------------------------------- delays


async def test_a_delayed_job_is_scheduled_then_runs(client, ns, settings) -> None:
    queue = await opened(saq(ns, client, fairness="user"), client)
    admission = gate(client, queue, ns)
    run_at = time.time() + 1.5
    job = await admit(admission, "u", run_at=run_at)
    info = await queue.status(job)
    assert info is not None and info.status is JobStatus.SCHEDULED
    assert info.run_at is not None and abs(info.run_at.timestamp() - run_at) < 0.01
    assert info.to_json()["status"] == "scheduled" and info.retry_at is None
    assert (await queue.depth())["incomplete"] == 1  # it counts toward max_depth
    assert (await queue.snapshot()).scheduled == 1
    handler = Recorder()
    async with working(queue, TaskSpec(Recorder.name, handler), settings):
        await eventually(lambda: asyncio.sleep(0, bool(handler.started)))
    assert handler.started[0][2] >= time.monotonic() - (time.time() - run_at) - 0.05
    done = await queue.status(job)
    assert done is not None and done.status is JobStatus.COMPLETE and done.run_at is None


async def test_a_delayed_job_can_be_aborted(client, ns) -> None:
    queue = await opened(saq(ns, client), client)
    job = await admit(gate(client, queue, ns), "u", run_at=time.time() + 60)
    assert (await queue.abort(job)).outcome is AbortOutcome.ABORTED
    assert (await queue.depth())["incomplete"] == 0
    assert await shard(queue).schedule() == []


# ----------------------------------------------------------------------- over HTTP

BAD_FIELDS = [
    ({"priority": 11}, "priority"),
    ({"priority": -11}, "priority"),
    ({"priority": 1.5}, "priority"),
    ({"priority": True}, "priority"),
    ({"delay": 0}, "delay"),
    ({"delay": -1}, "delay"),
    ({"delay": "5"}, "delay"),
    ({"delay": 61}, "delay"),
    ({"run_at": "tomorrow"}, "run_at"),
    ({"run_at": "2030-01-01T00:00:00"}, "run_at"),  # no offset
    ({"run_at": "2030-02-31T00:00:00Z"}, "run_at"),
    ({"run_at": 1_900_000_000}, "run_at"),
    ({"run_at": "2999-01-01T00:00:00+01:00"}, "run_at"),  # beyond max_delay
    ({"delay": 5, "run_at": "2030-01-01T00:00:00Z"}, "run_at"),
]


@pytest.mark.parametrize("on", ["single", "cluster"])
def test_priority_and_delay_over_http(
    ns: Namespace, spawn: Any, on: str, request: pytest.FixtureRequest, sync_redis: Any
) -> None:
    """Bad fields are 422s naming them with nothing charged or queued; a delayed job
    is scheduled with its run_at, then runs."""
    queue = {"type": "saq", "name": ns.queue, "fairness": "user", "max_delay": 60}
    limiter = {"type": "token_bucket", "capacity": 20, "refill": 1, "period": 3600}
    process = spawn({**config_on(on, ns, request), "queue": queue, "limiter": limiter})
    url = f"{process.url}/task"

    def state(job_id: str) -> str:
        return str(httpx.get(f"{url}/{job_id}", timeout=10).json()["status"])

    first = httpx.post(url, json={"user_id": "u", "priority": 3}, timeout=10).json()["job_id"]
    assert wait_until(lambda: state(first) == "complete", timeout=20)
    before = ns.snapshot(sync_redis)
    for fields, name in BAD_FIELDS:
        answer = httpx.post(url, json={"user_id": "u", **fields}, timeout=10)
        assert answer.status_code == 422, (fields, answer.text)
        assert [p["field"] for p in answer.json()["problems"]] == [name], answer.json()
    assert ns.snapshot(sync_redis) == before  # the token bucket too: nothing charged
    at = datetime.now(UTC) + timedelta(seconds=2)
    delayed = httpx.post(url, json={"user_id": "u", "run_at": at.isoformat()}, timeout=10)
    job = httpx.get(f"{url}/{delayed.json()['job_id']}", timeout=10).json()
    assert (job["status"], job["retry_at"]) == ("scheduled", None)
    assert abs(datetime.fromisoformat(job["run_at"]).timestamp() - at.timestamp()) < 0.01
    later = httpx.post(url, json={"user_id": "v", "delay": 0.5}, timeout=10).json()["job_id"]
    items = [{"user_id": "w", "delay": 0.5, "priority": 2}, {"user_id": "w", "priority": 99}]
    batch = httpx.post(f"{process.url}/tasks", json={"tasks": items}, timeout=10).json()
    assert [r["status"] for r in batch["results"]] == ["queued", "invalid"], batch
    assert [p["field"] for p in batch["results"][1]["problems"]] == ["priority"]
    assert state(batch["results"][0]["job_id"]) == "scheduled"
    assert wait_until(lambda: state(later) == "complete", timeout=20)
    assert state(delayed.json()["job_id"]) == "scheduled"
    assert wait_until(lambda: state(delayed.json()["job_id"]) == "complete", timeout=20)
    started = httpx.get(f"{url}/{delayed.json()['job_id']}", timeout=10).json()["started_at"]
    assert datetime.fromisoformat(started) >= at


ADMIN = {"Authorization": "Bearer test-admin-token-0123456789"}


@pytest.mark.parametrize("on", ["single", "cluster"])
def test_weights_over_the_admin_endpoint(
    ns: Namespace, spawn: Any, on: str, request: pytest.FixtureRequest
) -> None:
    queue = {"type": "saq", "name": ns.queue, "fairness": "user", "shards": 2}
    queue["weights"] = {"big": 2}
    config = config_on(on, ns, request)
    config["limits"] = {"admin": {"enabled": True, "token": ADMIN["Authorization"][7:]}}
    process = spawn({**config, "queue": queue})
    url = f"{process.url}/admin/weights"

    def weight(user: str) -> int:
        answer = httpx.get(f"{url}/{user}", headers=ADMIN, timeout=10)
        assert answer.status_code == 200, answer.text
        assert answer.json()["user_id"] == user.replace("%2F", "/")
        return int(answer.json()["weight"])

    assert wait_until(lambda: weight("big") == 2, timeout=20)  # the worker wrote the config's
    assert weight("a%2Fb") == 1
    for user in ("big", "a%2Fb"):  # each user's home shard, whichever it is
        put = httpx.put(f"{url}/{user}", json={"weight": 7}, headers=ADMIN, timeout=10)
        assert put.json() == {"user_id": user.replace("%2F", "/"), "weight": 7}
        assert weight(user) == 7
    assert httpx.delete(f"{url}/big", headers=ADMIN, timeout=10).json()["weight"] == 2
    assert httpx.delete(f"{url}/a%2Fb", headers=ADMIN, timeout=10).json()["weight"] == 1
    assert (weight("big"), weight("a%2Fb")) == (2, 1)
    for body, status in (
        ({"weight": 0}, 422),
        ({"weight": 1001}, 422),
        ({"weight": "2"}, 422),
        ({"weight": 2, "x": 1}, 422),
        ([2], 400),
    ):
        answer = httpx.put(f"{url}/big", json=body, headers=ADMIN, timeout=10)
        assert answer.status_code == status, (body, answer.text)
    bad = httpx.put(f"{url}/big", json={"weight": 0}, headers=ADMIN, timeout=10).json()
    assert [p["field"] for p in bad["problems"]] == ["weight"]
    assert httpx.get(f"{url}/big", timeout=10).status_code == 401
    assert weight("big") == 2


async def test_status_shows_fairness_scheduled_jobs_and_top_users(
    client, ns, settings, tmp_path, request
) -> None:
    queue = await opened(saq(ns, client, fairness="user"), client)
    admission = gate(client, queue, ns)
    for user, count in (("heavy", 4), ("light", 1)):
        for _ in range(count):
            await admit(admission, user)
    await admit(admission, "later", run_at=time.time() + 60)
    on = "cluster" if settings.cluster else "single"
    config = config_on(on, ns, request)
    config["queue"] = {"type": "saq", "name": ns.queue, "fairness": "user"}
    path = write_config(tmp_path, config)
    shown = run_cli(["status", str(path), "--json"], tmp_path)
    assert shown.returncode == 0, shown.stderr
    body = json.loads(shown.stdout)
    assert (body["queued"], body["scheduled"], body["fairness"]) == (5, 1, "user")
    assert body["top_users"] == [
        {"user_id": "heavy", "queued": 4},
        {"user_id": "light", "queued": 1},
    ]
    text = run_cli(["status", str(path)], tmp_path).stdout
    assert "fairness: user" in text and "users with the most queued jobs:" in text
    assert any(line.split() == ["heavy", "4"] for line in text.splitlines()), text


async def test_the_line_scripts_run_on_the_embedded_fakeredis(ns, request) -> None:
    """``memory://`` (embedded mode) runs the same scripts: round-robin, priority, delay."""
    memory = connect(RedisSettings(url=f"memory://{request.node.nodeid}"))
    queue = await opened(saq(ns, memory, fairness="user"), memory)
    admission = gate(memory, queue, ns)
    heavy = [await admit(admission, "heavy") for _ in range(3)]
    light = await admit(admission, "light", priority=2)
    await admit(admission, "later", run_at=time.time() + 60)
    assert await takes(shard(queue)) == [heavy[0], light, heavy[1], heavy[2]]
    assert (await queue.snapshot()).scheduled == 1
    await memory.aclose()
