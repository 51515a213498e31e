"""End to end: ``taskhub`` as a real subprocess, over real HTTP, on the real Redis."""

from __future__ import annotations

import json
import re
import signal
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.support.backends import config_on
from tests.support.configs import ROOT, config_dict, write_config
from tests.support.namespaces import Namespace
from tests.support.plugin_sources import limiter_plugin
from tests.support.processes import TaskhubProcess, run_cli, wait_until
from tests.support.redis_servers import PrivateRedis

RATE_HEADERS = (
    "Retry-After",
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
    "RateLimit-Policy",
    "RateLimit",
)


def post(url: str, body: Any, **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{url}/task", json=body, timeout=10, **kwargs)


def log_lines(directory: Path) -> list[str]:
    path = directory / "task.log"
    return path.read_text().splitlines() if path.exists() else []


def wait_for_lines(directory: Path, count: int, timeout: float = 15) -> list[str]:
    wait_until(lambda: len(log_lines(directory)) >= count, timeout)
    return log_lines(directory)


def assert_stops_cleanly(process: TaskhubProcess, sig: int = signal.SIGTERM) -> None:
    assert process.stop(sig) == 0, process.output
    assert "taskhub stopped" in process.output
    assert "Traceback" not in process.output


@pytest.mark.parametrize("on", ["single", "cluster"])
def test_twenty_admitted_then_429_with_headers_and_twenty_log_lines(
    tmp_path: Path, ns: Namespace, spawn, on: str, request: pytest.FixtureRequest
) -> None:
    process = spawn(config_on(on, ns, request))
    try:
        responses = [post(process.url, {"user_id": "user123"}) for _ in range(21)]
        assert [r.status_code for r in responses] == [200] * 20 + [429]
        job_ids = [r.json()["job_id"] for r in responses[:20]]
        assert len(set(job_ids)) == 20
        assert responses[0].json() == {
            "status": "queued",
            "job_id": job_ids[0],
            "task": "log_completion",
        }
        assert responses[0].headers["X-RateLimit-Remaining"] == "19"

        refused = responses[20]
        for header in RATE_HEADERS:
            assert header in refused.headers, header
        assert refused.headers["content-type"] == "application/json"
        # the next token is 3 s after the first request (2 if this machine is very slow)
        assert refused.headers["Retry-After"] in {"2", "3"}
        assert refused.headers["X-RateLimit-Limit"] == "20"
        assert refused.headers["X-RateLimit-Remaining"] == "0"
        reset = int(refused.headers["X-RateLimit-Reset"])
        assert 0 < reset - time.time() <= 61
        assert refused.headers["RateLimit-Policy"] == '"token_bucket";q=20;w=60'
        assert re.fullmatch(r'"token_bucket";r=0;t=(5\d|60)', refused.headers["RateLimit"])
        body = refused.json()
        assert body["error"] == "rate_limited"
        assert body["retry_after"] == int(refused.headers["Retry-After"])

        lines = wait_for_lines(tmp_path, 20)
        time.sleep(0.3)  # nothing more should arrive
        lines = log_lines(tmp_path)
        assert len(lines) == 20
        pattern = re.compile(
            r"Task completed for user user123 at "
            r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z \(task=log_completion job=(\w+) attempt=1\)"
        )
        logged = [pattern.fullmatch(line) for line in lines]
        assert all(logged), lines
        assert sorted(m.group(1) for m in logged if m) == sorted(job_ids)
    finally:
        assert_stops_cleanly(process)


BAD_REQUESTS = [
    # (description, request kwargs, status, error code)
    (
        "not JSON",
        {"content": b"{user_id: 1", "headers": {"content-type": "application/json"}},
        400,
        "invalid_json",
    ),
    (
        "empty body",
        {"content": b"", "headers": {"content-type": "application/json"}},
        400,
        "invalid_json",
    ),
    ("JSON array", {"json": [1, 2]}, 400, "invalid_body"),
    ("JSON string", {"json": "user123"}, 400, "invalid_body"),
    ("missing user_id", {"json": {}}, 422, "invalid_request"),
    ("user_id a number", {"json": {"user_id": 123}}, 422, "invalid_request"),
    ("user_id null", {"json": {"user_id": None}}, 422, "invalid_request"),
    ("user_id empty", {"json": {"user_id": ""}}, 422, "invalid_request"),
    ("user_id too long", {"json": {"user_id": "x" * 257}}, 422, "invalid_request"),
    ("user_id with NUL", {"json": {"user_id": "a\u0000b"}}, 422, "invalid_request"),
    ("unknown task", {"json": {"user_id": "u", "task": "resize"}}, 422, "invalid_request"),
    ("payload not an object", {"json": {"user_id": "u", "payload": [1]}}, 422, "invalid_request"),
    ("unknown field", {"json": {"user_id": "u", "userid": "u"}}, 422, "invalid_request"),
    (
        "deeply nested",
        {
            "content": b'{"user_id":"u","payload":' + b'{"a":' * 500 + b"1" + b"}" * 501,
            "headers": {"content-type": "application/json"},
        },
        400,
        "invalid_json",
    ),
    (
        "text/plain",
        {"content": b'{"user_id":"u"}', "headers": {"content-type": "text/plain"}},
        415,
        "unsupported_media_type",
    ),
    ("form", {"data": {"user_id": "u"}}, 415, "unsupported_media_type"),
    (
        "over 64 KiB",
        {"json": {"user_id": "u", "payload": {"blob": "x" * 70_000}}},
        413,
        "payload_too_large",
    ),
]


def test_bad_input_gets_its_status_and_changes_nothing_in_redis(
    tmp_path: Path, ns: Namespace, redis_url: str, sync_redis: redis.Redis, spawn
) -> None:
    process = spawn(config_dict(ns, redis_url))
    try:
        assert post(process.url, {"user_id": "seed-the-namespace"}).status_code == 200
        wait_for_lines(tmp_path, 1)
        before = ns.snapshot(sync_redis)
        for description, kwargs, status, code in BAD_REQUESTS:
            response = httpx.post(f"{process.url}/task", timeout=10, **kwargs)
            assert response.status_code == status, (description, response.text)
            body = response.json()
            assert body["error"] == code, (description, body)
            assert body["message"], description
            assert "Traceback" not in response.text
        other = [
            httpx.get(f"{process.url}/task"),
            httpx.get(f"{process.url}/nowhere"),
        ]
        assert [r.status_code for r in other] == [405, 404]
        assert all(r.json()["error"] for r in other)
        assert ns.snapshot(sync_redis) == before
        assert ns.queued(sync_redis) == 0
    finally:
        assert_stops_cleanly(process)


def test_validation_messages_name_the_field(ns: Namespace, redis_url: str, spawn) -> None:
    process = spawn(config_dict(ns, redis_url))
    try:
        body = post(process.url, {"user_id": "x" * 257}).json()
        assert body["problems"] == [
            {"field": "user_id", "message": "string should have at most 256 characters"}
        ]
        body = post(process.url, {"user_id": "u", "task": "resize"}).json()
        assert body["problems"][0]["field"] == "task"
        assert "choose one of: log_completion" in body["problems"][0]["message"]
    finally:
        assert_stops_cleanly(process)


BROKEN_LIMITER = limiter_plugin(
    "Broken", "broken", "local M = {} function M.check() error('secret internals') end return M"
)


def test_unexpected_error_is_a_500_with_an_error_id_and_no_trace(
    tmp_path: Path, ns: Namespace, redis_url: str, spawn
) -> None:
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "broken.py").write_text(BROKEN_LIMITER)
    config = config_dict(ns, redis_url, plugins_dir="plugins", limiter={"type": "broken"})
    process = spawn(config)
    try:
        response = post(process.url, {"user_id": "u"})
        assert response.status_code == 500
        body = response.json()
        assert body["error"] == "internal" and re.fullmatch(r"[0-9a-f]{12}", body["error_id"])
        assert "secret internals" not in response.text and "Traceback" not in response.text
        assert process.wait_for(f"unhandled error {body['error_id']}", 5)
        assert "Traceback" in process.output and "secret internals" in process.output
    finally:
        process.stop()


def test_redis_down_is_503_and_recovers_without_a_restart(
    tmp_path: Path, ns: Namespace, private_redis: PrivateRedis, spawn
) -> None:
    process = spawn(config_dict(ns, private_redis.url))
    try:
        assert post(process.url, {"user_id": "before"}).status_code == 200
        wait_for_lines(tmp_path, 1)
        private_redis.stop()
        outage = [post(process.url, {"user_id": f"during-{i}"}) for i in range(5)]
        assert [r.status_code for r in outage] == [503] * 5
        assert outage[0].headers["Retry-After"] == "1"
        assert outage[0].json()["error"] == "unavailable"
        private_redis.start()
        assert wait_until(lambda: post(process.url, {"user_id": "after"}).status_code == 200, 15)
        lines = wait_for_lines(tmp_path, 2, timeout=20)
        assert any("user after " in line for line in lines), lines
        assert not any("during-" in line for line in lines)
        # logged once per outage and once on recovery, not per request
        assert process.output.count("Redis (admission) is unreachable") == 1
        assert "Redis (admission) is reachable again" in process.output
        # the worker backs off and logs once too, instead of spinning or printing tracebacks
        assert process.output.count(f"Redis (queue '{ns.queue}') is unreachable") == 1
    finally:
        assert_stops_cleanly(process)


def test_embedded_memory_mode_end_to_end(tmp_path: Path, ns: Namespace, spawn) -> None:
    process = spawn(config_dict(ns, "memory://"))
    try:
        statuses = [post(process.url, {"user_id": "user123"}).status_code for _ in range(21)]
        assert statuses == [200] * 20 + [429]
        assert len(wait_for_lines(tmp_path, 20)) == 20
        assert "embedded fakeredis" in process.output
    finally:
        assert_stops_cleanly(process, signal.SIGINT)


@pytest.mark.parametrize(
    ("limiter", "after_block"),
    [
        # The seed's semantics: a 1 s block, then a fresh window of 20.
        ({"type": "fixed_window", "points": 20, "duration": 60, "block_duration": 1}, 200),
        # A token bucket: after the 1 s block it is still empty (the next token is 30 s away).
        ({"type": "token_bucket", "capacity": 20, "refill": 20, "period": 600, "block": 1}, 429),
        # A sliding window: the last minute's 20 still weigh (almost) fully.
        ({"type": "sliding_window", "limit": 20, "period": 60, "block": 1}, 429),
        # GCRA: the next request is allowed 30 s after the burst.
        ({"type": "gcra", "max_burst": 19, "rate": 20, "period": 600}, 429),
    ],
)
def test_swapping_the_limiter_is_an_edit_of_the_limiter_block(
    ns: Namespace, redis_url: str, spawn, limiter: dict[str, Any], after_block: int
) -> None:
    process = spawn(config_dict(ns, redis_url, limiter=limiter))
    try:
        responses = [post(process.url, {"user_id": "swap"}) for _ in range(22)]
        assert [r.status_code for r in responses] == [200] * 20 + [429] * 2
        policy = responses[-1].headers["RateLimit-Policy"]
        assert policy.startswith(f'"{limiter["type"]}";q=20;w='), policy
        time.sleep(1.2)
        assert post(process.url, {"user_id": "swap"}).status_code == after_block
    finally:
        assert_stops_cleanly(process)


def test_example_limiter_from_plugins_dir(ns: Namespace, redis_url: str, spawn) -> None:
    config = config_dict(ns, redis_url, limiter={"type": "daily_quota", "quota": 3})
    process = spawn(config)
    try:
        responses = [post(process.url, {"user_id": "quota"}) for _ in range(4)]
        assert [r.status_code for r in responses] == [200, 200, 200, 429]
        refused = responses[3]
        assert refused.headers["RateLimit-Policy"] == '"daily_quota";q=3;w=86400'
        assert 1 <= int(refused.headers["Retry-After"]) <= 86_400
    finally:
        assert_stops_cleanly(process)


def test_example_handler_from_plugins_dir(
    tmp_path: Path, ns: Namespace, redis_url: str, sync_redis: redis.Redis, spawn
) -> None:
    tasks = {"log_completion": {}, "count_words": {"min_length": 3, "retries": 2}}
    process = spawn(config_dict(ns, redis_url, tasks=tasks))
    try:
        text = {"text": "to be or not to be that is the question"}
        response = post(process.url, {"user_id": "u", "task": "count_words", "payload": text})
        assert response.status_code == 200
        job_id = response.json()["job_id"]
        lines = wait_for_lines(tmp_path, 1)
        assert f"(task=count_words job={job_id} attempt=1)" in lines[0]

        def stored() -> dict[str, Any] | None:
            job = json.loads(sync_redis.get(f"saq:job:{ns.queue}:{job_id}"))
            return job if job["status"] == "complete" else None

        job = wait_until(stored, 10)
        assert job["result"] == {"words": 4}  # not, that, the, question
        assert job["retries"] == 2

        bad = post(process.url, {"user_id": "u", "task": "count_words", "payload": {"txt": 1}})
        assert bad.status_code == 422
        fields = {p["field"] for p in bad.json()["problems"]}
        assert fields == {"payload.text", "payload.txt"}
    finally:
        assert_stops_cleanly(process)


def test_server_and_worker_as_separate_processes(
    tmp_path: Path, ns: Namespace, redis_url: str, spawn
) -> None:
    server_dir, worker_dir = tmp_path / "server", tmp_path / "worker"
    config = config_dict(ns, redis_url)
    server = spawn(config, "serve", cwd=server_dir)
    worker = spawn(config, "worker", cwd=worker_dir, wait_for="started (worker)")
    try:
        job_ids = [post(server.url, {"user_id": f"user{i}"}).json()["job_id"] for i in range(5)]
        lines = wait_for_lines(worker_dir, 5)
        assert sorted(re.search(r"job=(\w+)", line).group(1) for line in lines) == sorted(job_ids)
        assert not (server_dir / "task.log").exists()
    finally:
        assert_stops_cleanly(server)
        assert_stops_cleanly(worker)


def test_port_in_use_exits_1_with_a_message(tmp_path: Path, ns: Namespace, redis_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = write_config(tmp_path, config_dict(ns, redis_url))
        result = run_cli(["run", str(path), "--port", str(port)], tmp_path)
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}: address already in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_unwritable_sink_exits_1_with_a_message(
    tmp_path: Path, ns: Namespace, redis_url: str
) -> None:
    sinks = [{"type": "file_log", "path": "missing-dir/task.log"}]
    path = write_config(tmp_path, config_dict(ns, redis_url, sinks=sinks))
    result = run_cli(["run", str(path)], tmp_path)
    assert result.returncode == 1
    assert "sinks[0] (file_log): [Errno 2] No such file or directory" in result.stderr
    assert "Traceback" not in result.stderr


def test_readme_curl_example_shape() -> None:
    """The README's quick start must be the seed's curl example, on the example config."""
    readme = (ROOT / "README.md").read_text()
    assert (
        'curl -X POST http://localhost:3000/task -H "Content-Type: application/json" '
        '-d \'{"user_id": "user123"}\''
    ) in readme
