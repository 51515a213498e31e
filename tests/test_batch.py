"""``POST /tasks`` on the real Redis, single and cluster: each item decided as ``POST /task``
would decide it, in order, each seeing the charges before it, in one round trip.

The API runs in this process (the ASGI application, role serve): the route is the
framework-neutral API's, the same on every server.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import orjson
import pytest
from redis.asyncio.client import Pipeline
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from taskhub.asgi import create_app
from taskhub.builtin.auth.none import NoAuth
from taskhub.builtin.limiters.token_bucket import TokenBucket
from taskhub.builtin.saq.queue import SaqQueue
from taskhub.builtin.tasks.log_completion import LogCompletion
from taskhub.components import Options, TaskSpec
from taskhub.config.models import RedisSettings
from taskhub.errors import BackendUnavailable
from taskhub.http import HttpRequest
from taskhub.limits.admission import Admission, Ask, Decision
from taskhub.limits.policy import Outcome, RequestContext, Rule
from taskhub.monitoring.metrics import BAD_REQUESTS, REQUESTS
from taskhub.store.clients import connect, is_unavailable
from taskhub.store.cluster_router import admission_pipeline, slot_of
from taskhub.store.connection import connection_settings
from taskhub.store.pipeline import RedisPipeline, _ReplyStream
from taskhub.web.batch import SubmitBatch
from taskhub.web.submission import SubmissionParser
from taskhub.web.tasks import SubmitTask
from tests.support.backends import client_on, config_on
from tests.support.cluster import LocalCluster, Node
from tests.support.configs import config_dict, write_config
from tests.support.namespaces import Namespace
from tests.support.processes import wait_until
from tests.support.redis_servers import PrivateRedis

BUCKET = {"type": "token_bucket", "capacity": 3, "refill": 1, "period": 3600, "block": 0}
ALICE_KEY = "alice-key-0123456789abcdef"
CI_KEY = "ci-key-0123456789abcdef-xyz"
SPEC = TaskSpec("log_completion", LogCompletion(LogCompletion.Config()))


@pytest.fixture(params=["single", "cluster"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def config(kind: str, ns: Namespace, request: pytest.FixtureRequest) -> dict[str, Any]:
    """Three tokens per user and no refill to speak of, on the single Redis or the cluster."""
    config = config_on(kind, ns, request)
    config["limiter"] = BUCKET
    return config


@contextlib.asynccontextmanager
async def served(config: dict[str, Any], directory: Path) -> AsyncIterator[httpx.AsyncClient]:
    """The API of ``config``, started in this process, and a client calling it."""
    app = create_app(write_config(directory, config), role="serve")
    transport = httpx.ASGITransport(app=app)
    try:
        await app.start()
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client
    finally:
        await app.stop()


def batch(*items: dict[str, Any]) -> dict[str, Any]:
    return {"tasks": list(items)}


def statuses(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [result["status"] for result in response.json()["results"]]


async def job_status(client: httpx.AsyncClient, job_id: str) -> str:
    response = await client.get(f"/task/{job_id}")
    assert response.status_code == 200, response.text
    return str(response.json()["status"])


def count(metric: Any, label: str) -> float:
    return float(metric.labels(label)._value.get())


# --------------------------------------------------------------------------- decisions


async def test_items_are_decided_in_order_each_seeing_the_charges_before_it(
    config: dict[str, Any], tmp_path: Path
) -> None:
    admitted, refused = count(REQUESTS, "admitted"), count(REQUESTS, "refused")
    async with served(config, tmp_path) as client:
        items = [{"user_id": "alice"}] * 5 + [{"user_id": "bob"}, {"user_id": "alice"}]
        response = await client.post("/tasks", json=batch(*items))
        assert statuses(response) == ["queued"] * 3 + ["rate_limited"] * 2 + ["queued"] * 1 + [
            "rate_limited"
        ]
        results = response.json()["results"]
        refusal = results[3]
        assert refusal["policy"] == "token_bucket" and refusal["retry_after"] >= 1
        assert refusal["refused_by"] == ["token_bucket"] and set(refusal) == {
            "status",
            "error",
            "message",
            "policy",
            "refused_by",
            "retry_after",
        }
        assert results[0]["task"] == "log_completion" and "replayed" not in results[0]
        jobs = [r["job_id"] for r in results if r["status"] == "queued"]
        assert len(set(jobs)) == 4
        for job_id in jobs:
            assert await job_status(client, job_id) == "queued"
        # the headers are the last decision's: alice's refusal
        assert response.headers["X-RateLimit-Remaining"] == "0"
        assert int(response.headers["Retry-After"]) >= 1
        # bob has two tokens left: a single POST /task sees the batch's charges
        single = await client.post("/task", json={"user_id": "bob"})
        assert single.headers["X-RateLimit-Remaining"] == "1"
        last_admitted = await client.post("/tasks", json=batch({"user_id": "bob"}))
        assert statuses(last_admitted) == ["queued"]
        assert last_admitted.headers["X-RateLimit-Remaining"] == "0"
        assert "Retry-After" not in last_admitted.headers
    assert count(REQUESTS, "admitted") - admitted == 6
    assert count(REQUESTS, "refused") - refused == 3


async def test_a_bad_item_is_invalid_with_its_problems_and_spoils_nothing(
    config: dict[str, Any], tmp_path: Path
) -> None:
    invalid = count(BAD_REQUESTS, "invalid_request")
    async with served(config, tmp_path) as client:
        items = [
            {"user_id": "carol"},
            {"user_id": "carol", "task": "nope"},
            "not an object",
            {"user_id": "carol", "colour": "red"},
            {"user_id": "carol", "idempotency_key": "has space"},
            {"user_id": "carol", "idempotency_key": 7},
            {"task": "log_completion"},
            {"user_id": "carol", "payload": {"n": 2**70}},
            {"user_id": "carol"},
        ]
        response = await client.post("/tasks", json=batch(*items))
        assert statuses(response) == ["queued"] + ["invalid"] * 7 + ["queued"]
        results = response.json()["results"]
        problems = [r.get("problems") for r in results]
        assert (
            problems[1][0]["field"] == "task" and "unknown task 'nope'" in problems[1][0]["message"]
        )
        assert problems[2] == [{"field": "body", "message": "body must be a JSON object"}]
        assert problems[3] == [{"field": "colour", "message": "unknown field"}]
        assert problems[4][0]["field"] == "idempotency_key"
        assert results[4]["error"] == "invalid_idempotency_key"
        assert problems[5] == [{"field": "idempotency_key", "message": "must be a string"}]
        assert problems[6] == [{"field": "user_id", "message": "required"}]
        assert problems[7][0]["field"] == "payload"
        # the same problems a single POST /task gets for the item alone
        alone = await client.post("/task", json=items[1])
        assert alone.status_code == 422 and alone.json()["problems"] == problems[1]
        # only the two valid items were charged: one token left
        assert response.headers["X-RateLimit-Remaining"] == "1"
        assert statuses(await client.post("/tasks", json=batch(*items[:1] * 2))) == [
            "queued",
            "rate_limited",
        ]
    assert count(BAD_REQUESTS, "invalid_request") - invalid >= 4


async def test_a_batch_replays_by_item_key_as_the_header_does(
    config: dict[str, Any], tmp_path: Path
) -> None:
    async with served(config, tmp_path) as client:
        items = [
            {"user_id": "dave", "idempotency_key": "k1"},
            {"user_id": "dave", "idempotency_key": "k2"},
            {"user_id": "dave", "idempotency_key": "k1"},  # the same job, in the same batch
            {"user_id": "erin", "idempotency_key": "k1"},  # keys are per user
        ]
        first = await client.post("/tasks", json=batch(*items))
        assert statuses(first) == ["queued"] * 4
        ids = [r["job_id"] for r in first.json()["results"]]
        assert ids[0] == ids[2] and len({ids[0], ids[1], ids[3]}) == 3
        assert [r.get("replayed", False) for r in first.json()["results"]] == [
            False,
            False,
            True,
            False,
        ]
        again = await client.post("/tasks", json=batch(*items))
        assert statuses(again) == ["queued"] * 4
        assert [r["job_id"] for r in again.json()["results"]] == ids
        assert all(r["replayed"] for r in again.json()["results"])
        # replays charged nothing: dave spent 2 of 3 tokens
        assert again.headers["X-RateLimit-Remaining"] == "2"  # erin's, the last decision
        header = await client.post(
            "/task", json={"user_id": "dave"}, headers={"Idempotency-Key": "k2"}
        )
        assert header.json()["job_id"] == ids[1] and header.json()["replayed"] is True
        fresh = await client.post("/task", json={"user_id": "dave"})
        assert fresh.status_code == 200 and fresh.headers["X-RateLimit-Remaining"] == "0"


async def test_the_whole_batch_is_refused_when_it_cannot_be_read(
    kind: str, ns: Namespace, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    config = config_on(kind, ns, request)
    config["server"]["batch_limit"] = 5
    async with served(config, tmp_path) as client:
        too_many = await client.post("/tasks", json=batch(*[{"user_id": "f"}] * 6))
        assert too_many.status_code == 413
        assert too_many.json()["error"] == "batch_too_large"
        assert "server.batch_limit" in too_many.json()["message"]
        assert "at most 5" in too_many.json()["message"]
        empty = await client.post("/tasks", json={"tasks": []})
        assert empty.status_code == 422 and empty.json()["problems"][0]["field"] == "tasks"
        for body, status, field in [
            ({"tasks": {"user_id": "f"}}, 422, "tasks"),
            ({}, 422, "tasks"),
            ({"tasks": [{"user_id": "f"}], "more": 1}, 422, "more"),
            ([{"user_id": "f"}], 400, None),
        ]:
            response = await client.post("/tasks", json=body)
            assert response.status_code == status, (body, response.text)
            if field is not None:
                assert response.json()["problems"][0]["field"] == field
        header = await client.post(
            "/tasks", json=batch({"user_id": "f"}), headers={"Idempotency-Key": "k"}
        )
        assert header.status_code == 400 and "idempotency_key" in header.json()["message"]
        not_json = await client.post("/tasks", content=b"{", headers={"Content-Type": "x/y"})
        assert not_json.status_code == 415
        broken = await client.post("/tasks", content=b"{")
        assert broken.status_code == 400 and broken.json()["error"] == "invalid_json"
        # nothing was charged: a full batch of 5 still gets 5 tokens of 20
        full = await client.post("/tasks", json=batch(*[{"user_id": "f"}] * 5))
        assert statuses(full) == ["queued"] * 5
        assert full.headers["X-RateLimit-Remaining"] == "15"


async def test_queue_full_is_per_item(config: dict[str, Any], tmp_path: Path) -> None:
    config["queue"]["max_depth"] = 2
    config["server"]["unavailable_retry_after"] = 3
    async with served(config, tmp_path) as client:
        items = [{"user_id": f"g{n}"} for n in range(4)]
        response = await client.post("/tasks", json=batch(*items))
        assert statuses(response) == ["queued", "queued", "queue_full", "queue_full"]
        full = response.json()["results"][2]
        assert full["error"] == "queue_full" and full["retry_after"] == 3
        # the full items charged nothing: g3 alone is told the same (2 left if it passed)
        assert response.headers["X-RateLimit-Remaining"] == "2"
        alone = await client.post("/task", json=items[3])
        assert alone.status_code == 503 and alone.headers["X-RateLimit-Remaining"] == "2"


async def test_execution_slots_are_held_per_item(config: dict[str, Any], tmp_path: Path) -> None:
    config["limiter"] = {"type": "concurrency", "limit": 2, "retry_after": 2}
    async with served(config, tmp_path) as client:
        items = batch(*[{"user_id": "slots"}] * 3)
        response = await client.post("/tasks", json=items)
        assert statuses(response) == ["queued", "queued", "rate_limited"]
        assert response.json()["results"][2]["retry_after"] == 2
        assert (await client.post("/task", json={"user_id": "slots"})).status_code == 429
        # aborting a queued job frees its slot, for exactly one more item
        first = response.json()["results"][0]["job_id"]
        assert (await client.delete(f"/task/{first}")).status_code == 200
        again = await client.post("/tasks", json=items)
        assert statuses(again) == ["queued", "rate_limited", "rate_limited"]


async def test_a_bound_key_submits_only_for_its_user(
    config: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TASKHUB_KEY_ALICE", ALICE_KEY)
    monkeypatch.setenv("TASKHUB_KEY_CI", CI_KEY)
    keys = [
        {"key": "${TASKHUB_KEY_ALICE}", "name": "alice", "user_id": "alice"},
        {"key": "${TASKHUB_KEY_CI}", "name": "ci"},
    ]
    config["auth"] = {"type": "api_key", "keys": keys}
    items = batch({"user_id": "alice"}, {"user_id": "mallory"}, {"user_id": "alice"})
    async with served(config, tmp_path) as client:
        anonymous = await client.post("/tasks", json=items)
        assert anonymous.status_code == 401 and "WWW-Authenticate" in anonymous.headers
        as_alice = {"Authorization": f"Bearer {ALICE_KEY}"}
        response = await client.post("/tasks", json=items, headers=as_alice)
        assert statuses(response) == ["queued", "invalid", "queued"]
        refused = response.json()["results"][1]
        assert refused["error"] == "forbidden"
        assert refused["problems"][0]["field"] == "user_id"
        assert "bound to user 'alice'" in refused["problems"][0]["message"]
        # an unbound key submits for anyone; mallory was not charged by the refusal
        as_ci = {"Authorization": f"Bearer {CI_KEY}"}
        mallory = batch(*[{"user_id": "mallory"}] * 4)
        assert statuses(await client.post("/tasks", json=mallory, headers=as_ci)) == [
            "queued",
            "queued",
            "queued",
            "rate_limited",
        ]


async def test_deny_cache_and_a_split_limiter_decide_as_for_single_submissions(
    ns: Namespace, redis_url: str, tmp_path: Path
) -> None:
    limits = {
        "redis_url": redis_url,
        "deny_cache": {"enabled": True},
        "admission": [{"name": "per_user", **BUCKET}],
    }
    config = config_dict(ns, redis_url, limits=limits)
    del config["limiter"]
    async with served(config, tmp_path) as client:
        items = batch(*[{"user_id": "henry"}] * 4, {"user_id": "iris"})
        first = await client.post("/tasks", json=items)
        assert statuses(first) == ["queued"] * 3 + ["rate_limited", "queued"]
        assert first.headers["X-RateLimit-Remaining"] == "2"
        again = await client.post("/tasks", json=items)  # henry's from the deny cache
        assert statuses(again) == ["rate_limited"] * 4 + ["queued"]


async def test_redis_down_is_a_503_and_leaves_nothing(ns: Namespace, tmp_path: Path) -> None:
    redis_server = PrivateRedis(tmp_path, aof=True).start()
    try:
        config = config_dict(ns, redis_server.url, limiter=BUCKET)
        async with served(config, tmp_path) as client:
            one = await client.post("/tasks", json=batch({"user_id": "j"}))
            assert statuses(one) == ["queued"]
            with redis_server.client() as check:
                before = ns.snapshot(check)
            redis_server.stop()
            response = await client.post("/tasks", json=batch(*[{"user_id": "k"}] * 3))
            assert response.status_code == 503, response.text
            assert response.json()["error"] == "unavailable" and "Retry-After" in response.headers
            redis_server.start()
            with redis_server.client() as check:
                assert ns.snapshot(check) == before  # nothing charged or queued for k
    finally:
        redis_server.stop()


def test_a_full_batch_fits_the_default_body_limit_on_every_server(spawn, ns, redis_url) -> None:
    """100 items with 500-byte payloads under the 64 KiB default; past it, the server's 413."""
    config = config_dict(ns, redis_url, limiter={**BUCKET, "capacity": 1000})
    url = spawn(config, "serve").url
    item = {"user_id": "live", "payload": {"text": "x" * 500}}
    response = httpx.post(f"{url}/tasks", json=batch(*[item] * 100), timeout=30)
    assert statuses(response) == ["queued"] * 100
    too_big = httpx.post(f"{url}/tasks", json=batch(*[item] * 130), timeout=30)
    assert too_big.status_code == 413 and too_big.json()["error"] == "payload_too_large"
    many = httpx.post(f"{url}/tasks", json=batch(*[{"user_id": "l"}] * 101), timeout=30)
    assert many.status_code == 413 and many.json()["error"] == "batch_too_large"


# --------------------------------------------------------------------------- one round trip


@pytest.fixture
def settings(kind: str, request: pytest.FixtureRequest) -> RedisSettings:
    if kind == "cluster":
        return RedisSettings(url=request.getfixturevalue("cluster").url, cluster=True)
    return RedisSettings(url=request.getfixturevalue("redis_url"))


async def test_a_batch_is_one_write_per_redis_node(
    settings: RedisSettings, ns: Namespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counted where commands leave: one flush of the pipelined connection per node,
    whatever the batch's size, the nodes' flushes concurrent."""
    client = connect(settings)
    pipeline = admission_pipeline(connection_settings(settings))
    assert pipeline is not None
    queue = SaqQueue(SaqQueue.Config(name=ns.queue, shards=3))
    queue.layout(cluster=settings.cluster)
    await queue.open(SimpleNamespace(redis=client))  # type: ignore[arg-type]
    bucket = TokenBucket(TokenBucket.Config(capacity=3, refill=1, period=3600, block=0))
    gate = Admission(
        client,
        [Rule("per_user", bucket)],
        queue,
        ns.prefix,
        pipeline=pipeline,
        shards=queue.layout(),
    )
    users = [f"u{n}" for n in range(9)]
    try:
        warm = await gate.admit_many([ask("warm-up"), *(ask(u, job_id=f"warm-{u}") for u in users)])
        assert all(isinstance(d, Decision) for d in warm)  # every node connected
        writes: list[tuple[Any, int]] = []
        flush = _ReplyStream.flush

        def counted(stream: _ReplyStream) -> None:
            if stream.unsent and not stream.lost:
                writes.append((stream.address, len(stream.unsent)))
            flush(stream)

        monkeypatch.setattr(_ReplyStream, "flush", counted)
        asks = [ask(user) for _ in range(4) for user in users]  # 36, users interleaved
        decisions = await gate.admit_many(asks)
        monkeypatch.undo()
        outcomes: dict[str, list[Outcome]] = {user: [] for user in users}
        for item, decision in zip(asks, decisions, strict=True):
            assert isinstance(decision, Decision)
            outcomes[item.request.user_id].append(decision.outcome)
        # each user spent a token on the warm-up: 2 left, in order
        for user in users:
            assert outcomes[user] == [Outcome.ADMITTED] * 2 + [Outcome.REFUSED] * 2, user
        nodes = {address for address, _ in writes}
        assert len(writes) == len(nodes), writes  # one write per node
        assert sum(size for _, size in writes) == len(asks)
        if settings.cluster:
            assert len(nodes) > 1  # the shards' users spread over the masters
    finally:
        await pipeline.close()
        await client.aclose()


async def test_without_a_pipeline_a_batch_is_decided_one_by_one(
    ns: Namespace, request: pytest.FixtureRequest
) -> None:
    """The embedded store (no socket): the same decisions, one call at a time."""
    client = client_on("memory", request)
    queue = SaqQueue(SaqQueue.Config(name=ns.queue))
    queue.layout(cluster=False)
    await queue.open(SimpleNamespace(redis=client))  # type: ignore[arg-type]
    bucket = TokenBucket(TokenBucket.Config(capacity=2, refill=1, period=3600, block=0))
    gate = Admission(client, [Rule("per_user", bucket)], queue, ns.prefix)
    decisions = await gate.admit_many([ask("m"), ask("m"), ask("m")])
    assert [d.outcome for d in decisions if isinstance(d, Decision)] == [
        Outcome.ADMITTED,
        Outcome.ADMITTED,
        Outcome.REFUSED,
    ]
    await client.aclose()


# ------------------------------------------------------------------- the pipeline's batches

INCR_BY = "return redis.call('INCRBY', KEYS[1], ARGV[1])"


def pipeline_at(url: str, **settings: float) -> RedisPipeline:
    pipeline = admission_pipeline(connection_settings(RedisSettings(url=url, **settings)))
    assert isinstance(pipeline, RedisPipeline)
    return pipeline


async def test_many_calls_leave_in_one_write_each_reply_or_error_in_its_place(
    redis_url: str, ns: Namespace
) -> None:
    pipeline = pipeline_at(redis_url)
    script = pipeline.script(INCR_BY)
    await script([f"{ns.prefix}:warm"], [1])
    writes: list[bytes] = []
    transport = pipeline._stream.transport  # type: ignore[union-attr]
    real_write = transport.write  # type: ignore[union-attr]
    transport.write = lambda data: (writes.append(data), real_write(data))[1]  # type: ignore
    key = f"{ns.prefix}:sum"
    replies = await script.many([([key], [1]), ([key], ["x"]), ([key], [2])])
    await pipeline.close()
    assert len(writes) == 1
    assert replies[0] == 1 and replies[2] == 3  # the error in between changed nothing
    assert isinstance(replies[1], ResponseError)


async def test_many_loads_a_script_redis_has_forgotten(private_redis: PrivateRedis) -> None:
    pipeline = pipeline_at(private_redis.url)
    script = pipeline.script(INCR_BY)
    assert await script.many([(["k"], [1]), (["k"], [1])]) == [1, 2]
    private_redis.client().script_flush()
    assert await script.many([(["k"], [1]), (["k"], [1])]) == [3, 4]
    await pipeline.close()


async def test_many_on_an_unreachable_redis_fails_every_call_without_raising() -> None:
    pipeline = pipeline_at("redis://127.0.0.1:1/0", connect_timeout=1)
    replies = await pipeline.script(INCR_BY).many([(["k"], [1]), (["k"], [2])])
    assert len(replies) == 2
    assert all(isinstance(r, RedisConnectionError) for r in replies), replies


class Answers:
    """An admission whose batch answers what the test says (a cluster with one master
    down: some items decided, the others unavailable)."""

    rules = ()

    def __init__(self, outcomes: list[Decision | Exception]) -> None:
        self.outcomes = outcomes

    async def admit_many(self, asks: list[Ask]) -> list[Decision | Exception]:
        assert len(asks) == len(self.outcomes)
        return self.outcomes


def endpoint(outcomes: list[Decision | Exception]) -> SubmitBatch:
    parser = SubmissionParser({SPEC.name: SPEC}, SPEC.name)
    single = SubmitTask(
        Answers(outcomes),  # type: ignore[arg-type]
        parser,
        NoAuth(Options()),
        trusted_proxies=[],
        retry_after_s=4,
    )
    return SubmitBatch(single, 10)


def post_batch(*users: str) -> HttpRequest:
    body = orjson.dumps(batch(*({"user_id": user} for user in users)))
    return HttpRequest("POST", "/tasks", {}, body)  # type: ignore[arg-type]


async def test_items_whose_redis_was_unreachable_are_unavailable_the_rest_stand() -> None:
    down = BackendUnavailable("Redis is unreachable")
    queued = Decision(Outcome.ADMITTED, "job-1", 1_000, ())
    response = await endpoint([queued, down])(post_batch("a", "b"))
    assert response.status == 200
    results = orjson.loads(response.body)["results"]
    assert [r["status"] for r in results] == ["queued", "unavailable"]
    assert results[1]["retry_after"] == 4
    nothing = await endpoint([down, down])(post_batch("a", "b"))
    assert nothing.status == 503 and nothing.headers["Retry-After"] == "4"


def ask(user: str, job_id: str | None = None) -> Ask:
    return Ask(SPEC, RequestContext(user, SPEC.name), None, job_id)


# ------------------------------------------------------------ a cluster's redirects and outages

INCR = "return redis.call('INCR', KEYS[1])"


def on_each_master(cluster: LocalCluster) -> list[str]:
    """A fresh key on each master (a hash tag of this test's own per slot)."""
    keys: dict[int, str] = {}
    while len(keys) < 3:
        key = f"{{taskhub-test:{uuid.uuid4().hex[:10]}}}:k"
        keys.setdefault(cluster.master_for_key(key).port, key)
    return list(keys.values())


async def test_a_batch_follows_ask_and_moved_item_by_item(cluster, router) -> None:
    incr = router.script(INCR)
    key, other, _ = on_each_master(cluster)
    assert await incr.many([([key], []), ([other], [])]) == [1, 1]
    slot = slot_of([key])
    source = cluster.master_for_slot(slot)
    target = next(n for n in cluster.nodes if n.port == cluster.master_for_key(other).port)
    source_id, target_id = node_id(source), node_id(target)
    fresh = key.replace(":k", ":fresh")
    with source.client() as src, target.client() as dst:
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        # the key still on the source runs there; the fresh one is sent on with ASK
        assert await incr.many([([key], []), ([fresh], []), ([other], [])]) == [2, 1, 2]
        src.migrate("127.0.0.1", target.port, [key], 0, 5000)
        for client in (dst, src):
            client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
    # the router still sends the slot to the source, which answers MOVED: retried there
    assert await incr.many([([key], []), ([other], [])]) == [3, 3]
    with target.client() as client:
        assert client.get(key) == b"3"


async def test_a_killed_master_fails_its_items_only(cluster, router) -> None:
    incr = router.script(INCR)
    keys = on_each_master(cluster)
    assert await incr.many([([key], []) for key in keys]) == [1, 1, 1]
    master = cluster.master_for_key(keys[0])
    replica = cluster.replica_of(master)
    assert wait_until(lambda: read_on_replica(replica, keys[0]) == b"1", 5)
    cluster.kill(master)
    try:
        replies = await incr.many([([key], []) for key in keys])
        assert is_unavailable(replies[0]), replies
        assert replies[1:] == [2, 2]  # the other masters' items stand
        cluster.promote(replica, force=True)
        assert wait_until(cluster.healthy, 15, 0.1)
        deadline = time.monotonic() + 10
        while True:  # the batch finds the promoted replica once the slot map is read again
            replies = await incr.many([([keys[0]], [])])
            if replies == [2]:
                break
            assert is_unavailable(replies[0]), replies
            assert time.monotonic() < deadline, "the router did not follow the failover"
            await asyncio.sleep(0.05)
    finally:
        cluster.revive(master)


def node_id(node: Node) -> str:
    with node.client() as client:
        return str(client.execute_command("CLUSTER", "MYID").decode())


def read_on_replica(replica: Node, key: str) -> bytes | None:
    with replica.client() as client:
        client.execute_command("READONLY")
        return client.get(key)


# ------------------------------------------------------------------------- a split limiter


@pytest.mark.parametrize("on", ["single", "cluster"])
async def test_a_split_limiter_decides_a_batch_in_one_round_trip_then_queues_in_one(
    on: str, ns: Namespace, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """limits.redis_url on the single Redis (one pipeline to the limiter, one write to the
    queue); shards placed in turn on the cluster (the limiter's calls one by one there)."""
    settings = (
        RedisSettings(url=request.getfixturevalue("cluster").url, cluster=True)
        if on == "cluster"
        else RedisSettings(url=request.getfixturevalue("redis_url"))
    )
    client = connect(settings)
    limiter = connect(settings) if on == "single" else None
    pipeline = admission_pipeline(connection_settings(settings))
    by = "round_robin" if on == "cluster" else "user"
    queue = SaqQueue(SaqQueue.Config(name=ns.queue, shards=3, shard_by=by))
    queue.layout(cluster=settings.cluster)
    await queue.open(SimpleNamespace(redis=client))  # type: ignore[arg-type]
    bucket = TokenBucket(TokenBucket.Config(capacity=3, refill=1, period=3600, block=0))
    gate = Admission(
        client,
        [Rule("per_user", bucket)],
        queue,
        ns.prefix,
        limiter_redis=limiter,
        pipeline=pipeline,
        shards=queue.layout(),
    )
    assert gate.split
    users = ["a", "b", "c"]
    try:
        await gate.admit_many([ask(f"warm-up-{n}") for n in range(3)])  # every node connected
        limiter_trips: list[int] = []
        execute = Pipeline.execute

        async def counted(pipe: Pipeline, raise_on_error: bool = True) -> list[Any]:
            limiter_trips.append(len(pipe.command_stack))
            return await execute(pipe, raise_on_error)

        writes: list[Any] = []
        flush = _ReplyStream.flush

        def written(stream: _ReplyStream) -> None:
            if stream.unsent and not stream.lost:
                writes.append(stream.address)
            flush(stream)

        monkeypatch.setattr(Pipeline, "execute", counted)
        monkeypatch.setattr(_ReplyStream, "flush", written)
        asks = [ask(user) for _ in range(4) for user in users]
        decisions = await gate.admit_many(asks)
        monkeypatch.undo()
        outcomes: dict[str, list[Outcome]] = {user: [] for user in users}
        for item, decision in zip(asks, decisions, strict=True):
            assert isinstance(decision, Decision), decision
            outcomes[item.request.user_id].append(decision.outcome)
        for user in users:
            assert outcomes[user] == [Outcome.ADMITTED] * 3 + [Outcome.REFUSED], user
        assert len(writes) == len(set(writes))  # the queue: one write per node
        if on == "single":
            assert limiter_trips == [12] and len(writes) == 1
    finally:
        await pipeline.close()  # type: ignore[union-attr]
        await client.aclose()
        if limiter is not None:
            await limiter.aclose()


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("closed", None),
        ("open", [Outcome.ADMITTED] * 4),
        ("local", [Outcome.ADMITTED] * 3 + [Outcome.REFUSED]),
    ],
)
async def test_a_batch_keeps_the_fail_mode_when_the_limiters_redis_is_down(
    mode: str,
    expected: list[Outcome] | None,
    ns: Namespace,
    redis_url: str,
    private_redis: PrivateRedis,
) -> None:
    settings = RedisSettings(url=redis_url)
    client = connect(settings)
    limiter = connect(RedisSettings(url=private_redis.url))
    pipeline = admission_pipeline(connection_settings(settings))
    queue = SaqQueue(SaqQueue.Config(name=ns.queue))
    queue.layout(cluster=False)
    bucket = TokenBucket(TokenBucket.Config(capacity=3, refill=1, period=3600, block=0))
    gate = Admission(
        client,
        [Rule("per_user", bucket)],
        queue,
        ns.prefix,
        limiter_redis=limiter,
        fail_mode=mode,  # type: ignore[arg-type]
        pipeline=pipeline,
    )
    try:
        private_redis.client().script_flush()  # its first batch loads the script again
        first = await gate.admit_many([ask("up"), ask("up")])
        assert [d.outcome for d in first if isinstance(d, Decision)] == [Outcome.ADMITTED] * 2
        private_redis.stop()
        decisions = await gate.admit_many([ask("down") for _ in range(4)])
        if expected is None:
            assert all(isinstance(d, BackendUnavailable) for d in decisions), decisions
        else:
            assert [d.outcome for d in decisions if isinstance(d, Decision)] == expected
            assert all(isinstance(d, Decision) and d.degraded for d in decisions)
    finally:
        await pipeline.close()  # type: ignore[union-attr]
        await client.aclose()
        await limiter.aclose()
