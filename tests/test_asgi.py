"""taskhub.asgi in this process: creating the application, its lifespan, its lazy start
when mounted, how a request and its body reach the API, two applications side by side,
and the close when the event loop ends.

The ASGI servers themselves run in test_asgi_conformance.py and test_asgi_mount.py.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import uvloop
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.routing import Mount

from taskhub import ConfigError, UsageError
from taskhub.asgi import TaskhubApp, create_app, from_environment, read_body, request_of
from tests.support.configs import config_dict, write_config
from tests.support.namespaces import Namespace
from tests.support.plugin_sources import DELIVERY_TASKS, delivery_plugins

STARTED = "taskhub 0.1.0 started"


@pytest.fixture(autouse=True)
def logger_levels() -> Iterator[None]:
    """The application sets the taskhub and saq loggers' levels: put them back after."""
    loggers = [logging.getLogger(name) for name in ("taskhub", "saq")]
    levels = [logger.level for logger in loggers]
    yield
    for logger, level in zip(loggers, levels, strict=True):
        logger.setLevel(level)


def memory_config(tmp_path: Path, **sections: Any) -> Path:
    """A config on the embedded store, its task.log in ``tmp_path``: no Redis needed."""
    ns = Namespace.new()
    sinks = [{"type": "file_log", "path": str(tmp_path / "task.log")}]
    return write_config(tmp_path, config_dict(ns, "memory://", sinks=sinks, **sections))


@pytest.fixture
async def memory_app(tmp_path: Path) -> AsyncIterator[TaskhubApp]:
    app = create_app(memory_config(tmp_path, server={"type": "sanic", "body_limit": 1024}))
    try:
        yield app
    finally:
        await app.stop()


def client_of(app: Any, base: str = "http://test") -> httpx.AsyncClient:
    """An HTTP client calling ``app`` in this process (no lifespan: a mount's situation)."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base)


class Lifespan:
    """Drives an application's ASGI lifespan as a server does."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.sent: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    async def send_event(self, kind: str) -> dict[str, Any]:
        if self.task is None:
            scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
            self.task = asyncio.create_task(self.app(scope, self.inbox.get, self.sent.put))
        await self.inbox.put({"type": f"lifespan.{kind}"})
        return await asyncio.wait_for(self.sent.get(), 20)


# ---------------------------------------------------------------- creating it


def test_a_bad_role_is_named(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"role 'worker'.*'run'.*'serve'"):
        create_app(memory_config(tmp_path), role="worker")


def test_a_bad_config_raises_its_config_error_with_yaml_paths(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"queue": {"type": "saq", "concurrency": 0}})
    with pytest.raises(ConfigError, match=r"queue\.concurrency"):
        create_app(path)


def test_the_embedded_store_cannot_serve_alone(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="memory://"):
        create_app(memory_config(tmp_path), role="serve")


def test_importing_the_module_needs_no_config() -> None:
    env = {k: v for k, v in os.environ.items() if k != "TASKHUB_CONFIG"}
    code = "import taskhub.asgi as m; assert callable(m.app); print('ok')"
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0 and result.stdout == "ok\n", result.stderr


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, r"TASKHUB_CONFIG is not set: .*set it to the config file's path"),
        ({"TASKHUB_CONFIG": "missing.yaml"}, r"missing\.yaml"),
        ({"TASKHUB_CONFIG": "{config}", "TASKHUB_ROLE": "worker"}, r"role 'worker'"),
        ({"TASKHUB_CONFIG": "{bad}"}, r"queue\.concurrency"),
    ],
)
async def test_the_module_app_fails_its_startup_with_the_reason(
    env: dict[str, str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = {
        "config": str(memory_config(tmp_path)),
        "bad": str(write_config(tmp_path, {"queue": {"concurrency": 0}}, "bad.yaml")),
    }
    monkeypatch.delenv("TASKHUB_CONFIG", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value.format(**paths))
    lifespan = Lifespan(TaskhubApp(from_environment))  # as taskhub.asgi:app, fresh
    answer = await lifespan.send_event("startup")
    assert answer["type"] == "lifespan.startup.failed"
    assert re.search(message, answer["message"]), answer["message"]


# ---------------------------------------------------------------- its lifespan


async def test_lifespan_starts_and_stops_the_hub(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    app = create_app(memory_config(tmp_path))
    lifespan = Lifespan(app)
    assert (await lifespan.send_event("startup"))["type"] == "lifespan.startup.complete"
    assert STARTED in caplog.text
    async with client_of(app) as client:
        job = (await client.post("/task", json={"user_id": "u1"})).json()["job_id"]
        for _ in range(200):
            if (await client.get(f"/task/{job}")).json()["status"] == "complete":
                break
            await asyncio.sleep(0.02)
        assert (await lifespan.send_event("shutdown"))["type"] == "lifespan.shutdown.complete"
        assert "taskhub stopped" in caplog.text
        after = await client.get("/health")
    assert after.status_code == 503 and after.json()["error"] == "unavailable"
    assert job in (tmp_path / "task.log").read_text()


async def test_a_host_lifespan_runs_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """``FastAPI(lifespan=jobs.lifespan)``: started before the first request, stopped
    with the host, whatever the server does with signals."""
    caplog.set_level(logging.INFO)
    jobs = create_app(memory_config(tmp_path))
    host = FastAPI(lifespan=jobs.lifespan)
    host.mount("/jobs", jobs)
    lifespan = Lifespan(host)
    assert (await lifespan.send_event("startup"))["type"] == "lifespan.startup.complete"
    assert STARTED in caplog.text
    async with client_of(host) as client:
        assert (await client.get("/jobs/health")).status_code == 200
    assert (await lifespan.send_event("shutdown"))["type"] == "lifespan.shutdown.complete"
    assert "taskhub stopped" in caplog.text


# ---------------------------------------------------------------- mounted, no lifespan


async def test_concurrent_first_requests_share_one_start(
    memory_app: TaskhubApp, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with client_of(memory_app) as client:
        answers = await asyncio.gather(*(client.get("/health") for _ in range(8)))
    assert [a.status_code for a in answers] == [200] * 8
    assert caplog.text.count(STARTED) == 1


async def test_mounted_under_a_prefix_the_api_sees_the_path_below_it(
    memory_app: TaskhubApp,
) -> None:
    host = Starlette(routes=[Mount("/jobs", app=memory_app)])
    async with client_of(host) as client:
        page = await client.get("/jobs/docs")
        assert page.status_code == 200 and b'href="docs/swagger-ui.css"' in page.content
        # the page's relative links, resolved against its URL, land under the prefix
        for link in ("docs/swagger-ui.css", "docs/swagger-ui-bundle.js", "openapi.json"):
            assert (await client.get(page.url.join(link))).status_code == 200, link
        missing = await client.get("/jobs/no%2Fthing")
        assert missing.status_code == 404
        assert missing.json()["message"] == "Requested URL /no%2Fthing not found"
        assert (await client.post("/jobs/task", json={"user_id": "u1"})).status_code == 200


def scope(**fields: Any) -> dict[str, Any]:
    return {
        "type": "http",
        "method": "GET",
        "path": "/task/a/b",
        "raw_path": b"/task/a%2Fb",
        "query_string": b"",
        "root_path": "",
        "headers": [],
        "client": ("10.0.0.7", 5123),
        **fields,
    }


@pytest.mark.parametrize(
    ("fields", "path"),
    [
        ({}, "/task/a%2Fb"),  # as sent: not percent-decoded
        ({"raw_path": b"/task/a%2Fb?x=1"}, "/task/a%2Fb"),  # a raw path with its query
        ({"raw_path": None, "path": "/task/a b"}, "/task/a%20b"),  # no raw path: re-encoded
        ({"root_path": "/jobs", "raw_path": b"/jobs/task/x"}, "/task/x"),  # Mount
        ({"root_path": "/jobs", "raw_path": b"/jobs"}, "/"),
        # uvicorn --root-path behind a proxy that strips it: the raw path lacks the prefix
        ({"root_path": "/jobs", "raw_path": b"/task/x"}, "/task/x"),
    ],
)
def test_the_path_the_api_sees(fields: dict[str, Any], path: str) -> None:
    request = request_of(scope(**fields))
    assert request is not None and request.path == path


def test_headers_query_and_client_reach_the_api() -> None:
    headers = [(b"x-user", b"caf\xc3\xa9"), (b"x-user", b"second"), (b"content-type", b"a/b")]
    headers.append((b"idempotency-key", b" \tk1 \t"))  # uvicorn's httptools mode keeps blanks
    request = request_of(scope(headers=headers, query_string=b"rule=per_ip"))
    assert request is not None
    assert request.headers.get("x-user") == "café"  # the first, decoded as Sanic decodes
    assert request.headers.get("idempotency-key") == "k1"  # a value without its blanks
    assert (request.query, request.client, request.method) == ("rule=per_ip", "10.0.0.7", "GET")
    assert request_of(scope(client=None)).client == ""  # type: ignore[union-attr]
    assert request_of(scope(raw_path=b"/caf\xc3\xa9")) is None  # not ASCII: a 400


async def test_a_body_over_the_limit_is_not_read_further() -> None:
    chunks = [{"type": "http.request", "body": b"x" * 400, "more_body": True}] * 5
    calls = iter(chunks)

    async def receive() -> dict[str, Any]:
        return next(calls)

    assert await read_body(receive, 1000) is None
    assert len(list(calls)) == 2  # three read: 1200 bytes, over 1000


async def test_a_declared_length_over_the_limit_gets_413_unread(memory_app: TaskhubApp) -> None:
    await memory_app.start()
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        raise AssertionError("the body was read")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    request = scope(
        method="POST",
        raw_path=b"/task",
        headers=[(b"content-length", b"5000"), (b"content-type", b"application/json")],
    )
    await memory_app(request, receive, send)
    assert sent[0]["status"] == 413
    assert b'"payload_too_large"' in sent[1]["body"]


async def test_a_client_gone_before_its_body_gets_no_answer(memory_app: TaskhubApp) -> None:
    await memory_app.start()
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await memory_app(scope(method="POST", raw_path=b"/task"), receive, send)
    assert sent == []


# ---------------------------------------------------------------- on the real Redis


@pytest.fixture
def namespaces(sync_redis: redis.Redis) -> Iterator[list[Namespace]]:
    made: list[Namespace] = []
    yield made
    for ns in made:
        ns.cleanup(sync_redis)


async def test_two_applications_side_by_side(
    namespaces: list[Namespace], redis_url: str, tmp_path: Path
) -> None:
    apps = []
    for name in ("a", "b"):
        ns = Namespace.new()
        namespaces.append(ns)
        (tmp_path / name).mkdir()
        sinks = [{"type": "file_log", "path": str(tmp_path / name / "task.log")}]
        config = config_dict(ns, redis_url, sinks=sinks)
        apps.append(create_app(write_config(tmp_path / name, config)))
    host = Starlette(routes=[Mount("/a", app=apps[0]), Mount("/b", app=apps[1])])
    try:
        async with client_of(host) as client:
            job_a = (await client.post("/a/task", json={"user_id": "u"})).json()["job_id"]
            job_b = (await client.post("/b/task", json={"user_id": "u"})).json()["job_id"]
            assert (await client.get(f"/b/task/{job_a}")).status_code == 404
            assert (await client.get(f"/a/task/{job_b}")).status_code == 404
            for _ in range(250):
                if (tmp_path / "a" / "task.log").exists() and (
                    tmp_path / "b" / "task.log"
                ).exists():
                    break
                await asyncio.sleep(0.02)
    finally:
        for app in apps:
            await app.stop()
    assert job_a in (tmp_path / "a" / "task.log").read_text()
    assert job_b in (tmp_path / "b" / "task.log").read_text()
    assert job_b not in (tmp_path / "a" / "task.log").read_text()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_when_the_loop_ends_it_closes_and_hands_jobs_back(
    loop: str,
    namespaces: list[Namespace],
    redis_url: str,
    sync_redis: redis.Redis,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A mounted application nobody stops: the loop's end cancels every task, the
    runtime's too. The job in flight goes back to the queue, the finished one's line
    is in task.log, the worker is gone, and nothing is left pending."""
    caplog.set_level(logging.INFO)
    ns = Namespace.new()
    namespaces.append(ns)
    sinks = [{"type": "file_log", "path": str(tmp_path / "task.log")}]
    config = config_dict(
        ns, redis_url, sinks=sinks, plugins_dir=delivery_plugins(tmp_path), tasks=DELIVERY_TASKS
    )
    app = create_app(write_config(tmp_path, config))
    jobs: dict[str, str] = {}

    async def serve() -> None:
        async with client_of(app) as client:
            done = await client.post("/task", json={"user_id": "u"})
            slow = await client.post(
                "/task", json={"user_id": "u", "task": "sleepy", "payload": {"seconds": 30}}
            )
            jobs.update(done=done.json()["job_id"], slow=slow.json()["job_id"])
            for _ in range(250):
                states = [
                    (await client.get(f"/task/{jobs[name]}")).json()["status"]
                    for name in ("done", "slow")
                ]
                if states == ["complete", "active"]:
                    return
                await asyncio.sleep(0.02)
            raise AssertionError(f"jobs not complete and active: {states}")

    factory = uvloop.new_event_loop if loop == "uvloop" else None
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(serve())
    assert "the event loop is ending: stopping taskhub" in caplog.text
    assert f"job {jobs['slow']} (task sleepy) handed back to the queue" in caplog.text
    assert "taskhub stopped" in caplog.text
    assert "Task was destroyed" not in caplog.text
    assert jobs["done"] in (tmp_path / "task.log").read_text()
    assert sync_redis.lrange(f"saq:{ns.queue}:queued", 0, -1) == [
        f"saq:job:{ns.queue}:{jobs['slow']}".encode()
    ]
