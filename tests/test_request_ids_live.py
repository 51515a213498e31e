"""Request ids and JSON logs through a real ``taskhub run``; no secret in any log line."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx

from tests.support.configs import config_dict
from tests.support.namespaces import Namespace
from tests.support.processes import wait_until
from tests.support.redis_servers import PrivateRedis

HEX_ID = re.compile(r"[0-9a-f]{16}")


def submit(url: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(f"{url}/task", json={"user_id": "u1"}, headers=headers, timeout=10)


def json_config(ns: Namespace, redis_url: str) -> dict[str, Any]:
    return config_dict(
        ns, redis_url, sinks=[{"type": "console"}], logging={"level": "INFO", "format": "json"}
    )


def test_request_ids_are_returned_and_reach_the_workers_log_lines(
    ns: Namespace, redis_url: str, spawn
) -> None:
    process = spawn(json_config(ns, redis_url))
    given = submit(process.url, {"X-Request-ID": "abc-123"})
    assert given.status_code == 200 and given.headers["X-Request-ID"] == "abc-123"
    job_id = given.json()["job_id"]

    generated = submit(process.url)
    assert HEX_ID.fullmatch(generated.headers["X-Request-ID"])
    for bad in ("a" * 300, "has space"):
        replaced = submit(process.url, {"X-Request-ID": bad})
        assert HEX_ID.fullmatch(replaced.headers["X-Request-ID"]), bad
    missing = httpx.get(f"{process.url}/nowhere", headers={"X-Request-ID": "r-404"}, timeout=10)
    assert missing.status_code == 404 and missing.headers["X-Request-ID"] == "r-404"

    def completion() -> dict[str, Any] | None:
        for line in process.lines:
            entry = json.loads(line) if line.startswith("{") else {}
            if entry.get("job_id") == job_id and "Task completed" in entry["message"]:
                return entry
        return None

    entry = wait_until(completion, 15)
    assert entry, process.output
    assert entry["request_id"] == "abc-123"
    assert (entry["user_id"], entry["task"], entry["logger"]) == (
        "u1",
        "log_completion",
        "taskhub.completions",
    )
    assert "a" * 300 not in process.output  # a bad id is ignored, not logged
    for line in process.lines:  # every line taskhub writes is one JSON object
        assert isinstance(json.loads(line), dict), line


def test_no_secret_reaches_the_log(ns: Namespace, tmp_path, spawn) -> None:
    password = "redis-pass-0123456789"
    token = "admin-token-0123456789"
    server = PrivateRedis(tmp_path / "redis", password=password)
    (tmp_path / "redis").mkdir()
    server.start()
    try:
        limits = {"admin": {"enabled": True, "token": token}}
        config = config_dict(ns, server.url, limits=limits, logging={"level": "DEBUG"})
        process = spawn(config, cwd=tmp_path / "run")
        assert submit(process.url).status_code == 200
        auth = {"Authorization": f"Bearer {token}"}
        assert httpx.get(f"{process.url}/admin/limits/u1", headers=auth, timeout=10).is_success
        wrong = {"Authorization": f"Bearer {password}"}
        assert (
            httpx.get(f"{process.url}/admin/limits/u1", headers=wrong, timeout=10).status_code
            == 403
        )
        assert wait_until((tmp_path / "run" / "task.log").exists, 15)
        server.stop()  # an outage: its errors are logged, still without the password
        submit(process.url)
        process.stop()
    finally:
        server.stop()
    assert "redis://:***@127.0.0.1" in process.output
    assert password not in process.output
    assert token not in process.output
