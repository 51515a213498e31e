"""The HTTP ceiling (bench/ceiling.py): taskhub's refusal as a constant, from a server
plugin with a stub API and from a bare ASGI app."""

import json
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from bench import ceiling
from bench.procs import port_open
from taskhub import Decision, HttpRequest, Outcome, RatePolicy, RuleResult, rate_limit_headers
from tests.support.processes import free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]


def test_the_refusal_carries_the_headers_taskhub_gives_a_refused_request():
    rule = RuleResult("token_bucket", RatePolicy(20, 60), False, False, 0, 60_000, 3_000)
    decision = Decision(Outcome.REFUSED, "job", 1_796_669_493_000, (rule,))
    assert rate_limit_headers(decision) == {
        name: value for name, value in ceiling.REFUSAL_HEADERS.items() if name != "X-Request-ID"
    }
    body = json.loads(ceiling.REFUSAL_BODY)
    assert body["error"] == "rate_limited" and body["retry_after"] == 3


async def test_the_stub_api_refuses_everything_but_health():
    api = ceiling.ConstantApi()
    refusal = await api.handle(HttpRequest("POST", "/task", {}, b'{"user_id":"x"}'))
    assert (refusal.status, refusal.body) == (429, ceiling.REFUSAL_BODY)
    assert refusal.headers == ceiling.REFUSAL_HEADERS
    assert refusal.headers is not ceiling.REFUSAL_HEADERS  # a new response each time
    health = await api.handle(HttpRequest("GET", "/health", {}))
    assert health.status == 200
    assert api.error(413).status == 413
    context = ceiling.StubContext()
    assert context.http is not None
    with pytest.raises(AttributeError, match="only http"):
        _ = context.redis


async def asgi(scope: dict, messages: list[dict]) -> list[dict]:
    sent: list[dict] = []
    incoming = iter(messages)

    async def receive() -> dict:
        return next(incoming)

    async def send(message: dict) -> None:
        sent.append(message)

    await ceiling.app(scope, receive, send)
    return sent


async def test_the_bare_asgi_app_reads_the_body_and_answers_the_same():
    chunks = [
        {"type": "http.request", "body": b'{"user', "more_body": True},
        {"type": "http.request", "body": b'_id":"x"}', "more_body": False},
    ]
    start, body = await asgi({"type": "http", "path": "/task"}, chunks)
    assert start["status"] == 429 and body["body"] == ceiling.REFUSAL_BODY
    headers = {name.decode(): value.decode() for name, value in start["headers"]}
    assert headers["content-length"] == str(len(ceiling.REFUSAL_BODY))
    assert headers["retry-after"] == "3" and len(headers) == 9  # type, length and 7 more
    start, _ = await asgi({"type": "http", "path": "/health"}, [{"type": "http.request"}])
    assert start["status"] == 200
    lifespan = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent = await asgi({"type": "lifespan"}, lifespan)
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


def test_the_runner_serves_the_registered_sanic_plugin_with_the_stub():
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.ceiling", "sanic", str(port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(lambda: port_open(port) or proc.poll() is not None, timeout=30)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/task", data=b'{"user_id":"x"}', method="POST"
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=5)
        assert refused.value.code == 429
        assert refused.value.read() == ceiling.REFUSAL_BODY
        assert refused.value.headers["RateLimit-Policy"] == '"token_bucket";q=20;w=60'
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as health:
            assert health.status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=15)
    assert proc.returncode == 0, out
    assert b"sanic ceiling on" in out


def test_the_runner_refuses_bad_arguments():
    assert ceiling.main(["sanic"]) == 2
    assert ceiling.main(["sanic", "port"]) == 2
