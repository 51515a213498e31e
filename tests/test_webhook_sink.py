"""The webhook sink against a real local receiver: signatures, retries, give-ups, shutdown.

The receiver is a small HTTP/1.1 server on asyncio streams in a thread of its own,
scripted per attempt (answer a status, drop the connection, hang), that checks
each request's signature the way docs/configuration.md tells receivers to.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import itertools
import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from taskhub.builtin.sinks.webhook import Webhook
from taskhub.cli.main import main
from taskhub.components import Completion, Failure, Task
from taskhub.errors import ConfigError
from taskhub.hub.kernel import Hub
from tests.support.backends import config_on
from tests.support.configs import config_dict, crash_queue
from tests.support.namespaces import Namespace
from tests.support.plugin_sources import delivery_plugins
from tests.support.processes import free_port, wait_until

SECRET = "whsec-0123456789abcdef-test"
TOLERANCE = 300  # seconds a receiver accepts a timestamp off its own clock


def verify(secret: bytes, header: str, body: bytes, now: float | None = None) -> bool:
    """A receiver's check, as the docs give it: the HMAC of ``t.body`` and a fresh ``t``."""
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        stamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    expected = hmac.new(secret, f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    fresh = abs((time.time() if now is None else now) - stamp) <= TOLERANCE
    return fresh and hmac.compare_digest(expected, fields.get("v1", ""))


@dataclass
class Attempt:
    at: float  # time.monotonic() when the request arrived
    headers: dict[str, str]
    body: bytes
    answer: str

    @property
    def signed(self) -> bool:
        return verify(SECRET.encode(), self.headers.get("webhook-signature", ""), self.body)


@dataclass
class Receiver:
    """Answers the Nth request with ``script[N]`` (the last entry repeats): a status
    code as a string (``429+1``: with ``Retry-After: 1``), ``drop`` (close without an
    answer) or ``hang``."""

    script: list[str]
    port: int = field(default_factory=free_port)
    attempts: list[Attempt] = field(default_factory=list)
    _loop: asyncio.AbstractEventLoop | None = None
    _stop: asyncio.Event | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/taskhub"

    def delivered(self) -> list[Attempt]:
        return [a for a in self.attempts if a.answer.startswith("2")]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")[1:]
            headers = {
                name.strip().lower(): value.strip()
                for name, _, value in (line.partition(":") for line in lines if line)
            }
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            answer = self.script[min(len(self.attempts), len(self.script) - 1)]
            self.attempts.append(Attempt(time.monotonic(), headers, body, answer))
            if answer == "drop":
                return
            if answer == "hang":
                await asyncio.sleep(60)
                return
            status, _, retry_after = answer.partition("+")
            extra = f"Retry-After: {retry_after}\r\n" if retry_after else ""
            writer.write(
                f"HTTP/1.1 {status} X\r\n{extra}Content-Length: 0\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def _serve(self, started: threading.Event) -> None:
        async def serve() -> None:
            self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
            server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
            started.set()
            async with server:
                await self._stop.wait()

        asyncio.run(serve())

    @contextlib.contextmanager
    def running(self) -> Iterator[Receiver]:
        started = threading.Event()
        thread = threading.Thread(target=self._serve, args=(started,), daemon=True)
        thread.start()
        assert started.wait(10), "the receiver did not start"
        try:
            yield self
        finally:
            assert self._loop is not None and self._stop is not None
            self._loop.call_soon_threadsafe(self._stop.set)
            thread.join(10)


def sink(url: str, **options: Any) -> Webhook:
    return Webhook(Webhook.Config(url=url, secret=SECRET, **options))  # type: ignore[arg-type]


def task(job_id: str = "j1") -> Task:
    return Task("log_completion", job_id, "alice", {"n": 1}, 1, datetime(2026, 1, 1, tzinfo=UTC))


def completion(job_id: str = "j1") -> Completion:
    return Completion(task(job_id), {"ok": True}, datetime(2026, 12, 7, 22, 0, tzinfo=UTC))


async def until(predicate: Any, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.01)


def undelivered(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "undelivered" in r.getMessage()]


# --------------------------------------------------------------------------- delivery


async def test_retries_with_growing_delays_then_delivers_signed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "taskhub.webhook")
    backoff = 0.2
    with Receiver(["500", "drop", "503", "500", "200"]).running() as receiver:
        webhook = sink(receiver.url, backoff=backoff, attempts=6, timeout=5)
        await webhook.open()
        started = time.monotonic()
        await webhook.emit(completion())
        await until(receiver.delivered)
        await webhook.close()
    attempts = receiver.attempts
    times = [a.at - started for a in attempts]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    print(f"\nwebhook attempts at (s): {[round(t, 3) for t in times]}")
    print(f"gaps between attempts (s): {[round(g, 3) for g in gaps]}")
    assert [a.answer for a in attempts] == ["500", "drop", "503", "500", "200"]
    # Equal jitter: the wait after the Nth failure is in [b*2^(N-1)/2, b*2^(N-1)], so
    # each gap is at least the lower bound, and the bounds double.
    for n, gap in enumerate(gaps, start=1):
        low, high = backoff * 2 ** (n - 1) / 2, backoff * 2 ** (n - 1)
        assert gap >= low - 0.01, (n, gap)
        assert gap <= high + 1.0, (n, gap)  # generous: a shared, loaded machine
    assert sum(gaps[2:]) > sum(gaps[:2])
    assert all(a.signed for a in attempts)
    assert len({a.headers["webhook-signature"] for a in attempts}) >= 1
    first = attempts[0]
    assert not verify(b"not-the-secret-at-all", first.headers["webhook-signature"], first.body)
    assert not verify(SECRET.encode(), first.headers["webhook-signature"], first.body + b" ")
    stamp = int(first.headers["webhook-signature"].split(",")[0].removeprefix("t="))
    assert not verify(SECRET.encode(), first.headers["webhook-signature"], first.body, stamp + 301)
    assert {a.headers["webhook-id"] for a in attempts} == {"j1-completed"}
    assert [a.headers["webhook-attempt"] for a in attempts] == ["1", "2", "3", "4", "5"]
    assert first.headers["content-type"] == "application/json"
    assert json.loads(first.body) == {
        "event": "completed",
        "job_id": "j1",
        "task": "log_completion",
        "user_id": "alice",
        "attempt": 1,
        "enqueued_at": "2026-01-01T00:00:00.000Z",
        "completed_at": "2026-12-07T22:00:00.000Z",
        "result": {"ok": True},
    }
    retried = [r.getMessage() for r in caplog.records if "next attempt in" in r.getMessage()]
    assert len(retried) == 4 and "status 500" in retried[0]
    assert not undelivered(caplog)


async def test_a_final_failure_is_delivered_as_a_failed_event() -> None:
    with Receiver(["200"]).running() as receiver:
        webhook = sink(receiver.url)
        await webhook.open()
        failed_at = datetime(2026, 12, 7, 22, 1, tzinfo=UTC)
        await webhook.failed(Failure(task("j2"), "RuntimeError: boom", failed_at))
        await until(receiver.delivered)
        await webhook.close()
    (attempt,) = receiver.attempts
    assert attempt.signed and attempt.headers["webhook-id"] == "j2-failed"
    body = json.loads(attempt.body)
    assert body["event"] == "failed" and body["error"] == "RuntimeError: boom"
    assert body["failed_at"] == "2026-12-07T22:01:00.000Z" and body["job_id"] == "j2"


async def test_undelivered_is_logged_after_the_last_attempt(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with Receiver(["503"]).running() as receiver:
        webhook = sink(receiver.url, backoff=0.05, attempts=3)
        await webhook.open()
        await webhook.emit(completion())
        await until(lambda: undelivered(caplog))
        await webhook.close()
    assert len(receiver.attempts) == 3
    assert undelivered(caplog) == [
        "webhook j1-completed undelivered after 3 attempts: status 503 on the last attempt"
    ]
    (record,) = [r for r in caplog.records if "undelivered" in r.getMessage()]
    assert record.levelno == logging.ERROR and record.name == "taskhub.webhook"


async def test_other_4xx_is_final_and_not_retried(caplog: pytest.LogCaptureFixture) -> None:
    with Receiver(["400", "200"]).running() as receiver:
        webhook = sink(receiver.url, backoff=0.05)
        await webhook.open()
        await webhook.emit(completion())
        await until(lambda: undelivered(caplog))
        await asyncio.sleep(0.3)  # a retry would come within 0.05 s
        await webhook.close()
    assert [a.answer for a in receiver.attempts] == ["400"]
    assert undelivered(caplog) == [
        "webhook j1-completed undelivered after 1 attempt: status 400, not retried"
    ]


async def test_429_is_retried_after_its_retry_after_within_max_backoff() -> None:
    with Receiver(["429+1", "429+3600", "200"]).running() as receiver:
        webhook = sink(receiver.url, backoff=0.05, max_backoff=1.5)
        await webhook.open()
        await webhook.emit(completion())
        await until(receiver.delivered)
        await webhook.close()
    assert [a.answer for a in receiver.attempts] == ["429+1", "429+3600", "200"]
    first, second, third = (a.at for a in receiver.attempts)
    print(
        f"\n429 gaps (s): {second - first:.3f} (Retry-After 1), "
        f"{third - second:.3f} (Retry-After 3600, max_backoff 1.5)"
    )
    assert second - first >= 0.99  # Retry-After, not the 0.05 s backoff
    assert 1.49 <= third - second < 5  # Retry-After capped by max_backoff


# --------------------------------------------------------------------------- never blocking


async def test_emit_returns_at_once_while_the_receiver_hangs_and_a_full_queue_gives_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with Receiver(["hang"]).running() as receiver:
        webhook = sink(receiver.url, timeout=30, queue_size=50, concurrency=2, shutdown_grace=0.5)
        await webhook.open()
        await webhook.emit(completion("j0"))
        await until(lambda: receiver.attempts)  # the receiver now holds a request open
        started = time.perf_counter()
        for n in range(1, 80):
            await webhook.emit(completion(f"j{n}"))
        took = time.perf_counter() - started
        print(f"\n79 emits while the receiver hangs: {took * 1000:.2f} ms")
        assert took < 0.5  # generous: it is a dict insert each, no I/O
        full = undelivered(caplog)
        assert len(full) == 30  # j50..j79 found 50 pending
        assert full[0] == (
            "webhook j50-completed undelivered after 0 attempts: 50 events already pending"
        )
        stopping = time.perf_counter()
        await webhook.close()
        stopped = time.perf_counter() - stopping
    print(f"close with a hanging receiver: {stopped:.2f} s (grace 0.5 s)")
    assert stopped < 5  # the grace, not the 30 s attempt timeout
    left = undelivered(caplog)[30:]
    assert len(left) == 50
    assert all("still pending when the 0.5 s shutdown grace ended" in line for line in left)


async def test_close_tries_waiting_retries_at_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "taskhub.webhook")
    with Receiver(["500", "200"]).running() as receiver:
        webhook = sink(receiver.url, backoff=60, shutdown_grace=10)
        await webhook.open()
        await webhook.emit(completion())
        # the 500 is in: a retry waits 30 to 60 s
        await until(lambda: any("next attempt in" in r.getMessage() for r in caplog.records))
        started = time.monotonic()
        await webhook.close()
        took = time.monotonic() - started
    assert [a.answer for a in receiver.attempts] == ["500", "200"]
    assert took < 5


# --------------------------------------------------------------------------- config


def write(tmp_path: Path, sink_yaml: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(f"plugins_dir: null\nsinks:\n  - {sink_yaml}\n")
    return path


@pytest.mark.parametrize(
    ("sink_yaml", "env", "expected"),
    [
        (
            "{type: webhook, secret: '${WEBHOOK_SECRET}'}",
            {"WEBHOOK_SECRET": SECRET},
            "sinks[0].url",
        ),
        (
            "{type: webhook, url: 'ftp://example.com/x', secret: '${WEBHOOK_SECRET}'}",
            {"WEBHOOK_SECRET": SECRET},
            "must start with http:// or https:// (scheme: ftp://)",
        ),
        (
            "{type: webhook, url: 'https:///x', secret: '${WEBHOOK_SECRET}'}",
            {"WEBHOOK_SECRET": SECRET},
            "has no host",
        ),
        ("{type: webhook, url: 'https://example.com/x'}", {}, "sinks[0].secret"),
        (
            "{type: webhook, url: 'https://example.com/x', secret: '${WEBHOOK_SECRET}'}",
            {},
            "environment variable WEBHOOK_SECRET is not set",
        ),
        (
            "{type: webhook, url: 'https://example.com/x', secret: '${WEBHOOK_SECRET}'}",
            {"WEBHOOK_SECRET": "short-secret"},
            "must be at least 16 characters long (it has 12)",
        ),
    ],
    ids=["no-url", "bad-scheme", "no-host", "no-secret", "unset-env", "short-secret"],
)
def test_bad_config_is_a_precise_error(
    tmp_path: Path, sink_yaml: str, env: dict[str, str], expected: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        Hub.from_file(write(tmp_path, sink_yaml), env=env)
    message = str(caught.value)
    assert expected in message, message
    assert "short-secret" not in message and SECRET not in message


def test_check_masks_the_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WEBHOOK_SECRET", SECRET)
    path = write(
        tmp_path, "{type: webhook, url: 'https://hooks.example.com/t', secret: '${WEBHOOK_SECRET}'}"
    )
    assert main(["check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "url: https://hooks.example.com/t" in out
    assert SECRET not in out and "secret: '***'" in out, out


# --------------------------------------------------------------------------- end to end

FAILING_PLUGIN = """
from taskhub import Task, TaskHandler, hookimpl


class AlwaysFails(TaskHandler):
    name = "always_fails"

    async def run(self, task: Task) -> None:
        raise RuntimeError("boom for the webhook")


@hookimpl
def register_handlers(register):
    register(AlwaysFails)
"""


@pytest.mark.servers("sanic")
def test_taskhub_run_delivers_signed_completions_and_failures(
    spawn: Any, ns: Namespace, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WEBHOOK_SECRET", SECRET)
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "always_fails.py").write_text(FAILING_PLUGIN)
    with Receiver(["500", "200"]).running() as receiver:
        config = config_dict(
            ns,
            redis_url,
            plugins_dir=str(plugins),
            sinks=[
                {"type": "file_log", "path": "task.log"},
                {
                    "type": "webhook",
                    "url": f"{receiver.url}?token=tok-in-the-url-0042",
                    "secret": "${WEBHOOK_SECRET}",
                    "backoff": 0.2,
                },
            ],
            tasks={"log_completion": {}, "always_fails": {"retries": 1}},
        )
        process = spawn(config, cwd=tmp_path / "run")
        assert "sinks: file_log" in process.output and "webhook" in process.output
        done = httpx.post(f"{process.url}/task", json={"user_id": "alice"}, timeout=10)
        assert done.status_code == 200, done.text
        job_id = done.json()["job_id"]
        assert wait_until(lambda: len(receiver.delivered()) == 1, 20), process.output
        failing = {"user_id": "bob", "task": "always_fails"}
        fails = httpx.post(f"{process.url}/task", json=failing, timeout=10)
        assert fails.status_code == 200, fails.text
        failed_id = fails.json()["job_id"]
        assert wait_until(lambda: len(receiver.delivered()) == 2, 20), process.output
        assert process.stop() == 0
    assert SECRET not in process.output and "tok-in-the-url-0042" not in process.output
    assert "token=***" in process.output, process.output
    first, second, third = receiver.attempts
    assert (first.answer, second.answer, third.answer) == ("500", "200", "200")
    assert all(a.signed for a in receiver.attempts)
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == f"{job_id}-completed"
    completed = json.loads(second.body)
    assert completed["event"] == "completed" and completed["user_id"] == "alice"
    assert completed["job_id"] == job_id and completed["task"] == "log_completion"
    assert third.headers["webhook-id"] == f"{failed_id}-failed"
    failed = json.loads(third.body)
    assert failed["event"] == "failed" and failed["user_id"] == "bob"
    assert "RuntimeError: boom for the webhook" in failed["error"]
    assert "webhook" in process.output and "next attempt in" in process.output


@pytest.mark.servers("sanic")
@pytest.mark.parametrize("on", ["single", "cluster"])
def test_a_worker_killed_on_a_last_attempt_is_reported_failed_once_by_the_sweep(
    spawn: Any,
    ns: Namespace,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    on: str,
    request: pytest.FixtureRequest,
) -> None:
    """The sweep's dead letters reach the sinks too: a worker SIGKILLed during a job's
    only attempt, another worker's sweep makes it a dead letter, and the receiver gets
    one ``failed`` event for it, however many sweeps follow."""
    monkeypatch.setenv("WEBHOOK_SECRET", SECRET)
    with Receiver(["200"]).running() as receiver:
        config = config_on(on, ns, request)
        config.update(
            plugins_dir=delivery_plugins(tmp_path),
            sinks=[{"type": "webhook", "url": receiver.url, "secret": "${WEBHOOK_SECRET}"}],
            tasks={"log_completion": {}, "sleepy": {"retries": 1}},
            queue=crash_queue(ns),  # 1 s heartbeats and sweeps
        )
        server = spawn(config, "serve", cwd=tmp_path / "server")
        doomed = spawn(config, "worker", cwd=tmp_path / "doomed", wait_for="started (worker)")
        body = {"user_id": "carol", "task": "sleepy", "payload": {"seconds": 600}}
        queued = httpx.post(f"{server.url}/task", json=body, timeout=10)
        assert queued.status_code == 200, queued.text
        job_id = queued.json()["job_id"]

        def status() -> str:
            found = httpx.get(f"{server.url}/task/{job_id}", timeout=10)
            return str(found.json()["status"])

        assert wait_until(lambda: status() == "active", 20), doomed.output
        doomed.kill()  # SIGKILL mid-job, on its last attempt
        sweeper = spawn(config, "worker", cwd=tmp_path / "sweeper", wait_for="started (worker)")
        assert wait_until(receiver.delivered, 30), sweeper.output
        assert wait_until(lambda: status() == "failed", 10)
        time.sleep(3)  # three more sweeps: none reports it again
        assert sweeper.stop() == 0
    [attempt] = receiver.attempts
    assert attempt.signed and attempt.headers["webhook-id"] == f"{job_id}-failed"
    failed = json.loads(attempt.body)
    assert failed["event"] == "failed" and failed["job_id"] == job_id
    assert failed["user_id"] == "carol" and failed["attempt"] == 1
    assert failed["error"] == "worker lost: no heartbeat for 1 s"
    assert "now a dead letter" in sweeper.output
