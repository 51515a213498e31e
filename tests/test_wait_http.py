"""``GET /task/{id}?wait=N`` over HTTP, on every server (Sanic, httptools, and uvicorn for
ASGI): bad ``wait`` values are a 422 naming it, an unknown job a 404 at once, a wait
ends early when the job settles and after N seconds otherwise, and a client that hangs
up frees its waiter.

A freed waiter is seen from Redis: the server's reader for the shard blocks in XREAD
only while it has waiters, so on a private redis-server the count of blocked clients
drops to 0 within one XREAD block once the last waiter is gone (and stays at 1 for
the whole wait otherwise).
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import redis

from taskhub.http import HttpResponse
from taskhub.web.waiting import wait_seconds
from tests.support.asgi_servers import start_asgi
from tests.support.configs import config_dict, write_config
from tests.support.namespaces import Namespace
from tests.support.processes import TaskhubProcess, wait_until
from tests.support.redis_servers import PrivateRedis

SOON = 15.0  # far below a 30 s wait, far above what a loaded machine needs


def submit(url: str, user: str = "waiter") -> str:
    response = httpx.post(f"{url}/task", json={"user_id": user}, timeout=10)
    assert response.status_code == 200, response.text
    return str(response.json()["job_id"])


def blocked_clients(client: redis.Redis) -> int:
    return sum("b" in entry["flags"] for entry in client.client_list())


def hang_up_after_asking(url: str, job_id: str) -> socket.socket:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    sock.sendall(f"GET /task/{job_id}?wait=30 HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n".encode())
    return sock


def check_waits(url: str, redis_client: redis.Redis) -> None:
    """Everything but the server's start: bad values, early answers, timeouts, hang-ups."""
    job_id = submit(url)
    for bad in ("0", "-1", "30.5", "31", "abc", "", "nan", "inf", "1_0", "5&wait=6"):
        response = httpx.get(f"{url}/task/{job_id}?wait={bad}", timeout=10)
        assert response.status_code == 422, (bad, response.text)
        assert [p["field"] for p in response.json()["problems"]] == ["wait"], bad
    started = time.monotonic()
    unknown = httpx.get(f"{url}/task/no-such-job?wait=30", timeout=40)
    assert unknown.status_code == 404 and time.monotonic() - started < SOON

    started = time.monotonic()
    timed_out = httpx.get(f"{url}/task/{job_id}?wait=1", timeout=40)
    assert timed_out.status_code == 200 and timed_out.json()["status"] == "queued"
    assert time.monotonic() - started >= 0.99

    answers: list[httpx.Response] = []
    waiting = threading.Thread(
        target=lambda: answers.append(httpx.get(f"{url}/task/{job_id}?wait=30", timeout=40))
    )
    started = time.monotonic()
    waiting.start()
    assert wait_until(lambda: blocked_clients(redis_client) == 1, SOON)
    assert httpx.delete(f"{url}/task/{job_id}", timeout=10).status_code == 200
    waiting.join(40)
    (answer,) = answers
    assert answer.status_code == 200 and answer.json()["status"] == "aborted"
    assert time.monotonic() - started < SOON
    settled = httpx.get(f"{url}/task/{job_id}?wait=30", timeout=40)  # at once
    assert settled.json()["status"] == "aborted"

    # A hang-up frees the waiter: the reader stops blocking long before the 30 s. (First
    # the reader of the waits above stops, so that the one blocking is this waiter's.)
    assert wait_until(lambda: blocked_clients(redis_client) == 0, SOON)
    other = submit(url)
    sock = hang_up_after_asking(url, other)
    assert wait_until(lambda: blocked_clients(redis_client) == 1, SOON)
    hung_up = time.monotonic()
    sock.close()
    assert wait_until(lambda: blocked_clients(redis_client) == 0, SOON), redis_client.client_list()
    assert time.monotonic() - hung_up < SOON
    assert httpx.get(f"{url}/task/{other}", timeout=10).json()["status"] == "queued"


@pytest.fixture
def private_client(private_redis: PrivateRedis) -> Any:
    client = redis.Redis.from_url(private_redis.url)
    yield client
    client.close()


def test_waits_over_http(
    tmp_path: Path, private_redis: PrivateRedis, private_client: redis.Redis, spawn: Any
) -> None:
    server = spawn(config_dict(Namespace.new(), private_redis.url), "serve")
    check_waits(server.url, private_client)
    assert "Traceback" not in server.output, server.output


def test_a_stopping_server_answers_its_waits_at_once(
    tmp_path: Path, private_redis: PrivateRedis, private_client: redis.Redis, server_type: str
) -> None:
    """SIGTERM wakes every wait: each answers with its job's current state (the job has
    no worker here: queued) within moments, not when the graceful period cuts it."""
    config = config_dict(Namespace.new(), private_redis.url)
    config["server"].update(type=server_type, graceful_shutdown=25)
    process = TaskhubProcess(["serve", str(write_config(tmp_path, config))], cwd=tmp_path)
    try:
        url = process.start().url
        job_id = submit(url)
        answers: list[httpx.Response] = []
        waits = [
            threading.Thread(
                target=lambda: answers.append(httpx.get(f"{url}/task/{job_id}?wait=30", timeout=40))
            )
            for _ in range(3)
        ]
        for wait in waits:
            wait.start()
        assert wait_until(lambda: blocked_clients(private_client) == 1, SOON)
        time.sleep(0.2)  # the three have registered (one reader blocks for all of them)
        stopped = time.monotonic()
        process.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        for wait in waits:
            wait.join(40)
        assert [answer.status_code for answer in answers] == [200] * 3, answers
        assert {answer.json()["status"] for answer in answers} == {"queued"}
        assert time.monotonic() - stopped < 5, "the waits were not answered at once"
        assert process.wait(30) == 0, process.output
        assert "Traceback" not in process.output, process.output
    finally:
        process.kill()


def test_waits_over_asgi(
    tmp_path: Path, private_redis: PrivateRedis, private_client: redis.Redis
) -> None:
    config = write_config(tmp_path, config_dict(Namespace.new(), private_redis.url))
    process: TaskhubProcess = start_asgi("uvicorn", config, tmp_path, env={"TASKHUB_ROLE": "serve"})
    try:
        check_waits(str(process.url), private_client)
        assert "Traceback" not in process.output, process.output
    finally:
        process.kill()


@pytest.mark.parametrize(
    ("query", "seconds"),
    [("wait=5", 5.0), ("wait=0.5", 0.5), ("wait=2e1", 20.0), ("wait=30", 30.0), ("x=1", None)],
)
def test_good_waits_parse(query: str, seconds: float | None) -> None:
    assert wait_seconds(query) == seconds


@pytest.mark.parametrize("query", ["wait=0", "wait=30.001", "wait=1e2", "wait=+5", "wait=%205"])
def test_bad_waits_are_422s_naming_wait(query: str) -> None:
    answer = wait_seconds(query)
    assert isinstance(answer, HttpResponse) and answer.status == 422
    assert b'"field":"wait"' in answer.body
