"""Every ASGI server answers as the Sanic server does: one request matrix, sent to
``taskhub run`` and to ``taskhub.asgi:app`` under uvicorn, hypercorn and granian.

Each server runs the same config in a namespace of its own, so each sees the same
state and owes the same answers: the same status, the same API headers and the same
body, job ids, times and request ids aside. Headers that only frame the message
(Content-Length, Connection, Date, Server) may differ.
"""

from __future__ import annotations

import contextlib
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.support.asgi_servers import ASGI_SERVERS, start_asgi
from tests.support.configs import config_dict, write_config
from tests.support.namespaces import Namespace
from tests.support.processes import TaskhubProcess, wait_until

KEY = "backend-key-0123456789"
BACKEND = {"Authorization": f"Bearer {KEY}"}
ALICE = {"Authorization": "Bearer alice-key-0123456789"}  # bound to user alice
ADMIN = {"Authorization": "Bearer admin-token-0123456789"}
DASHBOARD = {"Authorization": "Bearer dashboard-token-0123456789"}
JSON = {"Content-Type": "application/json"}
BODY_LIMIT = 1024

# What only frames the message, which each server writes its own way.
FRAMING = {"content-length", "connection", "keep-alive", "transfer-encoding", "date", "server"}
JOB_ID = re.compile(r"^[0-9a-f]{32}(-\d+)?$")
TIME = re.compile(r"^\d{4}-\d\d-\d\dT[\d:.]+Z$")
WORKER_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f-]{27}$")
NAMESPACE = re.compile(r"taskhub-test:[0-9a-f]{10}:")  # each server's own keys
# Body numbers that count time, which moves between two servers' runs.
CLOCKS = re.compile(r"(_ms|_s|uptime|until)$")

Answer = tuple[int, dict[str, str], Any]


def conformance_config(ns: Namespace, redis_url: str) -> dict[str, Any]:
    """Auth with a bound and an unbound key, a small per-user limit and an ip rule, the
    admin endpoint, the dashboard and metrics, and a 1 KiB body limit."""
    config = config_dict(
        ns,
        redis_url,
        server={"type": "sanic", "host": "127.0.0.1", "port": 0, "body_limit": BODY_LIMIT},
        auth={
            "type": "api_key",
            "keys": [
                {"key": "alice-key-0123456789", "name": "alice", "user_id": "alice"},
                {"key": KEY, "name": "backend"},
            ],
        },
        limits={
            "admission": [
                {
                    "name": "per_user",
                    "type": "token_bucket",
                    "capacity": 3,
                    "refill": 1,
                    "period": 60,
                },
                {
                    "name": "per_ip",
                    "key": "ip",
                    "type": "fixed_window",
                    "points": 100,
                    "duration": 60,
                },
            ],
            "admin": {"enabled": True, "token": ADMIN["Authorization"][7:]},
        },
        dashboard={"enabled": True, "token": DASHBOARD["Authorization"][7:]},
    )
    del config["limiter"]  # limits.admission instead
    return config


def header_value(name: str, value: str) -> str:
    if name == "x-request-id" and re.fullmatch(r"[0-9a-f]{16}", value):
        return "<request id>"
    if name in ("x-ratelimit-reset", "retry-after"):
        return "<seconds>"
    if name == "ratelimit":
        return re.sub(r";t=\d+", ";t=<seconds>", value)
    return value


def normal(value: Any, key: str = "") -> Any:
    """A JSON body with what differs between runs (ids, times, clocks) replaced."""
    if isinstance(value, dict):
        return {k: normal(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [normal(v, key) for v in value]
    if isinstance(value, str):
        for pattern, stand_in in ((JOB_ID, "<job id>"), (TIME, "<time>"), (WORKER_ID, "<id>")):
            if pattern.match(value):
                return stand_in
        return NAMESPACE.sub("<namespace>:", value)
    if isinstance(value, int | float) and not isinstance(value, bool) and CLOCKS.search(key):
        return "<clock>"
    return value


def shape(value: Any) -> Any:
    """Only the keys of a body whose numbers (or their absence) move by the second."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(v) for v in value[:1]]
    return "number" if value is None or isinstance(value, int | float) else type(value).__name__


def metric_names(response: httpx.Response) -> Any:
    return sorted(line for line in response.text.splitlines() if line.startswith("# TYPE"))


def answer(response: httpx.Response, body: Any = None) -> Answer:
    headers = {
        name: header_value(name, value)
        for name, value in response.headers.items()
        if name not in FRAMING
    }
    if body is not None:
        return response.status_code, headers, body(response)
    if response.headers.get("content-type") == "application/json" and response.content:
        return response.status_code, headers, normal(response.json())
    return response.status_code, headers, response.content


def matrix(url: str) -> dict[str, Answer]:
    """The requests, in order; their answers by label."""
    answers: dict[str, Answer] = {}
    with httpx.Client(base_url=url, timeout=10) as client:

        def record(label: str, response: httpx.Response, body: Any = None) -> httpx.Response:
            answers[label] = answer(response, body)
            return response

        def submit(user: str, **headers: str) -> httpx.Response:
            return client.post("/task", json={"user_id": user}, headers={**BACKEND, **headers})

        record("GET /health", client.get("/health"))
        record("GET /health/ (trailing slash)", client.get("/health/"))
        record("GET /health?query", client.get("/health?probe=1&x=%20"))
        record("HEAD /health", client.head("/health"))
        record("X-Request-ID echoed", client.get("/health", headers={"X-Request-ID": "conf-1"}))
        record("GET /ready", client.get("/ready"))

        record("401 without a key", client.post("/task", json={"user_id": "u1"}))
        record(
            "403 key bound to another user",
            client.post("/task", json={"user_id": "bob"}, headers=ALICE),
        )
        first = record("200 submitted", submit("u1", **{"Idempotency-Key": "conf-1"}))
        replay = record("200 idempotent replay", submit("u1", **{"Idempotency-Key": "conf-1"}))
        assert replay.json()["job_id"] == first.json()["job_id"]
        record("200 second", submit("u1"))
        record("200 third", submit("u1"))
        record("429 refused, with rate-limit headers", submit("u1"))
        record(
            "400 invalid JSON",
            client.post("/task", content=b'{"user_id": ', headers={**BACKEND, **JSON}),
        )
        record(
            "400 not an object", client.post("/task", content=b"[1]", headers={**BACKEND, **JSON})
        )
        record("400 bad Idempotency-Key", submit("u2", **{"Idempotency-Key": "k" * 300}))
        record(
            "415 not JSON",
            client.post(
                "/task", content=b"user_id=u2", headers={**BACKEND, "Content-Type": "text/plain"}
            ),
        )
        record("422 no user_id", client.post("/task", json={}, headers=BACKEND))
        record(
            "422 unknown task",
            client.post("/task", json={"user_id": "u2", "task": "nope"}, headers=BACKEND),
        )
        record("422 unknown field", client.post("/task", json={"userid": "u2"}, headers=BACKEND))
        big = b'{"user_id": "u2", "payload": {"x": "' + b"x" * BODY_LIMIT + b'"}}'
        record(
            "413 over body_limit (Content-Length)",
            client.post("/task", content=big, headers={**BACKEND, **JSON}),
        )
        record(
            "413 over body_limit (chunked)",
            client.post("/task", content=iter([big[:600], big[600:]]), headers={**BACKEND, **JSON}),
        )
        record(
            "200 with a chunked body",
            client.post(
                "/task",
                content=iter([b'{"user_id": "u5", ', b'"payload": {}}']),
                headers={**BACKEND, **JSON},
            ),
        )

        record("404 unknown path", client.get("/nope"))
        record("404 percent-encoded path, as sent", client.get("/n%C3%A9pe/%2F"))
        record("405 DELETE /health, with Allow", client.delete("/health"))
        record("405 PUT /task, with Allow", client.put("/task"))

        job = first.json()["job_id"]

        def complete() -> bool:
            status = client.get(f"/task/{job}", headers=BACKEND).json().get("status")
            return status == "complete"

        assert wait_until(complete, 15), "the job did not complete"
        record("GET /task/{id}", client.get(f"/task/{job}", headers=BACKEND))
        record("GET /task/{id} without a key", client.get(f"/task/{job}"))
        record("GET /task/{unknown}", client.get("/task/0123abcd", headers=BACKEND))
        record("GET /task/{id with %2F}", client.get("/task/a%2Fb", headers=BACKEND))
        record("DELETE /task/{finished}", client.delete(f"/task/{job}", headers=BACKEND))
        record("DELETE /task/{unknown}", client.delete("/task/0123abcd", headers=BACKEND))

        record("GET /openapi.json", client.get("/openapi.json"))
        record("GET /docs", client.get("/docs"))
        for asset in ("swagger-ui.css", "swagger-ui-bundle.js", "init.js", "nope.js"):
            record(f"GET /docs/{asset}", client.get(f"/docs/{asset}"))
        record("GET /metrics", client.get("/metrics"), metric_names)

        record("admin 401", client.get("/admin/limits/u1"))
        record("admin: a user's state", client.get("/admin/limits/u1", headers=ADMIN))
        record(
            "X-Forwarded-For from an untrusted peer",
            submit("u4", **{"X-Forwarded-For": "203.0.113.9"}),
        )
        record(
            "admin: the forwarded address was not charged",
            client.get("/admin/limits/203.0.113.9?rule=per_ip", headers=ADMIN),
        )
        record(
            "admin: the peer's address was",
            client.get("/admin/limits/127.0.0.1?rule=per_ip", headers=ADMIN),
        )
        record("admin: reset", client.delete("/admin/limits/u1", headers=ADMIN))

        record("GET /dashboard", client.get("/dashboard"))
        record("dashboard data 401", client.get("/dashboard/api/summary"))
        record(
            "dashboard data",
            client.get("/dashboard/api/summary", headers=DASHBOARD),
            lambda r: shape(r.json()),
        )
    return answers


@contextlib.contextmanager
def serve(server: str, directory: Path, redis_url: str) -> Iterator[TaskhubProcess]:
    """``server`` on the conformance config in a namespace of its own, stopped after."""
    ns = Namespace.new()
    config = write_config(directory, conformance_config(ns, redis_url))
    if server == "sanic":
        process = TaskhubProcess(["run", str(config)], cwd=directory).start()
    else:
        process = start_asgi(server, config, directory)
    client = redis.Redis.from_url(redis_url)
    try:
        yield process
        # uvicorn raises the signal again once it has shut down: it ends by SIGTERM
        assert process.stop(signal.SIGTERM) in (0, -signal.SIGTERM), process.output
        assert "taskhub stopped" in process.output, process.output
    finally:
        process.kill()
        ns.cleanup(client)
        client.close()


@pytest.fixture(scope="module")
def sanic_answers(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Answer]:
    with serve("sanic", tmp_path_factory.mktemp("sanic"), redis_url) as process:
        return matrix(process.url)


@pytest.mark.parametrize("server", ASGI_SERVERS)
def test_asgi_server_answers_as_the_sanic_server(
    server: str, sanic_answers: dict[str, Answer], redis_url: str, tmp_path: Path
) -> None:
    with serve(server, tmp_path, redis_url) as process:
        answers = matrix(process.url)
    differences = [
        f"{label}:\n  sanic: {sanic_answers[label]}\n  {server}: {answers[label]}"
        for label in sanic_answers
        if answers[label] != sanic_answers[label]
    ]
    assert not differences, "\n".join(differences)
    assert len(answers) == len(sanic_answers) > 40
