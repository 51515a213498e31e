"""The open-loop generator (bench/c/openloop.c, bench/openloop.py) against a trivial
local server: it holds its rate, and measures latency from each request's scheduled
time, so a server that stalls is charged for every request it delayed."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import threading
import time

import pytest

from bench import openloop

needs_cc = pytest.mark.skipif(
    not (shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")),
    reason="no C compiler to build bench/c/openloop.c",
)

OUTPUT = {
    "target_rate": 2000.0,
    "duration_s": 2.0,
    "warmup_s": 0.0,
    "connections": 64,
    "due": 4000,
    "sent": 4000,
    "answered": 3990,
    "ok": 3980,
    "non_2xx": 10,
    "failed": 4,
    "unanswered": 6,
    "connect_errors": 1,
    "protocol_errors": 0,
    "reconnects": 2,
    "achieved_per_s": 1995.0,
    "elapsed_s": 2.01,
    "mean_ms": 0.5,
    "p50_ms": 0.25,
    "p90_ms": 0.5,
    "p99_ms": 2.5,
    "p999_ms": 9.5,
    "max_ms": 12.0,
    "send_lag_p50_ms": 0.02,
    "send_lag_p99_ms": 0.2,
    "send_lag_max_ms": 1.0,
    "max_backlog": 0,
    "statuses": {"200": 3980, "429": 10},
}


def test_parse_reads_the_last_json_line():
    result = openloop.parse("noise\n" + json.dumps(OUTPUT) + "\n")
    assert result.p999_ms == 9.5
    assert result.statuses == {"200": 3980, "429": 10}
    assert result.errors == 4 + 6 + 1
    assert result.rate_error == pytest.approx(0.0025)
    assert result.as_dict()["errors"] == 11


def test_parse_rejects_other_output():
    with pytest.raises(openloop.OpenLoopError):
        openloop.parse("openloop: cannot connect\n")
    partial = {k: v for k, v in OUTPUT.items() if k != "p999_ms"}
    with pytest.raises(openloop.OpenLoopError, match="p999_ms"):
        openloop.parse(json.dumps(partial))


def test_command_passes_every_option():
    args = openloop.command(
        openloop.BUILD / "openloop",
        "http://127.0.0.1:1/task",
        2500.5,
        3,
        connections=8,
        warmup=0.5,
        body='{"user_id":"o%u"}',
        users=10,
        headers=["Content-Type: application/json"],
        seed=7,
        trace=openloop.BUILD / "trace.txt",
    )
    assert args[1:] == [
        *("-r", "2500.5", "-d", "3", "-c", "8", "-w", "0.5", "-s", "7", "-T", "5"),
        *("-b", '{"user_id":"o%u"}', "-u", "10", "-H", "Content-Type: application/json"),
        *("-o", str(openloop.BUILD / "trace.txt")),
        "http://127.0.0.1:1/task",
    ]
    with pytest.raises(ValueError):
        openloop.command(openloop.BUILD / "openloop", "http://x/", 0, 1)


class Server:
    """HTTP/1.1 on 127.0.0.1, in a thread with its own event loop. Each request is
    answered 200 after ``delay`` s (other connections go on meanwhile); ``stall`` s
    after the first request, the whole loop blocks once for ``stall_for`` s.
    ``close`` answers with ``Connection: close`` and closes; ``chunked`` sends the
    body in chunks."""

    def __init__(
        self,
        delay: float = 0.0,
        stall: float | None = None,
        stall_for: float = 0.0,
        close: bool = False,
        chunked: bool = False,
    ) -> None:
        self.delay, self.stall, self.stall_for = delay, stall, stall_for
        self.close, self.chunked = close, chunked
        self.bodies: list[bytes] = []
        self.arrivals: list[float] = []  # when each request was read, monotonic s
        self.first: float | None = None
        self.stalled = False
        self.loop = asyncio.new_event_loop()
        self.port = 0
        started = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(started,), daemon=True)
        self.thread.start()
        assert started.wait(5)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/task"

    def response(self) -> bytes:
        if self.chunked:
            head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            return head + b"2\r\nok\r\n3;x=1\r\n!!!\r\n0\r\nX-Trailer: 1\r\n\r\n"
        close = b"Connection: close\r\n" if self.close else b""
        return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n" + close + b"\r\nok"

    def _run(self, started: threading.Event) -> None:
        server = self

        class Protocol(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = transport
                self.buffer = b""

            def data_received(self, data: bytes) -> None:
                self.buffer += data
                while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
                    length = re.search(rb"(?i)content-length: *(\d+)", self.buffer[:end])
                    size = int(length.group(1)) if length else 0
                    if len(self.buffer) < end + 4 + size:
                        return
                    server.bodies.append(self.buffer[end + 4 : end + 4 + size])
                    self.buffer = self.buffer[end + 4 + size :]
                    server.arrived()
                    if server.delay:
                        asyncio.get_running_loop().call_later(server.delay, self.answer)
                    else:
                        self.answer()

            def answer(self) -> None:
                if not self.transport.is_closing():
                    self.transport.write(server.response())
                    if server.close:
                        self.transport.close()

        async def serve() -> None:
            listener = await asyncio.get_running_loop().create_server(Protocol, "127.0.0.1", 0)
            self.port = listener.sockets[0].getsockname()[1]
            started.set()
            await listener.serve_forever()

        asyncio.set_event_loop(self.loop)
        self.task = self.loop.create_task(serve())
        self.loop.run_until_complete(asyncio.gather(self.task, return_exceptions=True))

    def arrived(self) -> None:
        now = time.monotonic()
        self.arrivals.append(now)
        if self.first is None:
            self.first = now
        if self.stall is not None and not self.stalled and now - self.first >= self.stall:
            self.stalled = True
            time.sleep(self.stall_for)  # blocks the whole server, as a long GC pause would

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.task.cancel)
        self.thread.join(5)


@pytest.fixture
def serve():
    servers: list[Server] = []

    def start(**options: object) -> Server:
        servers.append(Server(**options))  # type: ignore[arg-type]
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


@needs_cc
def test_it_holds_its_rate_and_fills_in_the_body(serve):
    server = serve()
    result = openloop.run(
        server.url,
        2000,
        2,
        warmup=0.5,
        connections=16,
        body=openloop.TASK_BODY,  # the open-loop rows' own body
        users=50,
        headers=[openloop.JSON_HEADER],
    )
    assert result.rate_error <= 0.02, result
    assert (result.due, result.sent, result.answered, result.ok) == (4000, 4000, 4000, 4000)
    assert result.errors == 0 and result.statuses == {"200": 4000}
    assert len(server.bodies) == 5000  # the warm-up's 1000 were sent, not counted
    users = {int(re.fullmatch(rb'\{"user_id":"o(\d+)"\}', b).group(1)) for b in server.bodies}
    assert min(users) >= 1 and max(users) <= 50 and len(users) == 50
    assert result.send_lag_p99_ms < 50  # its own sends keep to the schedule
    # And as the server saw it: 2000/s, evenly, in every quarter of a second.
    measured = server.arrivals[-4000:]
    assert (len(measured) - 1) / (measured[-1] - measured[0]) == pytest.approx(2000, rel=0.02)
    quarters = [0] * 8
    for at in measured:
        quarters[min(7, int((at - measured[0]) / 0.25))] += 1
    assert all(450 <= count <= 550 for count in quarters), quarters


@needs_cc
def test_latency_of_a_server_that_sleeps_is_the_sleep(serve):
    server = serve(delay=0.02)
    result = openloop.run(server.url, 300, 1.5, connections=32)
    assert result.rate_error <= 0.02, result
    assert 20 <= result.p50_ms <= 25, result
    assert 20 <= result.p99_ms <= 45, result
    assert result.max_backlog == 0  # 32 connections are plenty for 300/s x 20 ms


@needs_cc
def test_a_stall_counts_for_every_request_it_delayed(serve, tmp_path):
    # 1000/s over 2 s, and the server stops for 300 ms once: the ~300 requests due
    # meanwhile wait until it is back, up to 300 ms each, so the slowest 1% (20) all
    # waited 280 ms or so. Only 8 were in flight: a closed-loop client, which sends
    # the next request only after an answer, would have had 8 slow ones (0.4%).
    server = serve(stall=0.7, stall_for=0.3)
    trace = tmp_path / "trace.txt"
    result = openloop.run(server.url, 1000, 2, connections=8, trace=trace)
    assert server.stalled
    assert result.answered == 2000 and result.errors == 0
    assert result.max_backlog >= 200
    assert 230 <= result.p99_ms <= 400, result
    assert result.p50_ms < 10, result  # most were due before or after it
    # The trace says which: those due during the stall, waiting the longer the earlier.
    lines = [tuple(map(float, line.split())) for line in trace.read_text().splitlines()]
    assert len(lines) == 2000
    slow = [due for due, latency in lines if latency >= 100]
    assert 150 <= len(slow) <= 250
    assert min(slow) >= 600 and max(slow) <= 1100


@needs_cc
def test_requests_left_unanswered_are_errors_at_a_lower_bound(serve):
    server = serve(delay=30)
    result = openloop.run(server.url, 100, 0.5, connections=4, drain=0.5)
    assert (result.due, result.sent, result.answered) == (50, 4, 0)
    assert result.unanswered == 50 and result.errors == 50
    assert result.p50_ms >= 500  # each had waited at least the drain time


@needs_cc
def test_closed_connections_are_opened_again_and_chunks_are_read(serve):
    closing = openloop.run(serve(close=True).url, 200, 0.5, connections=4)
    assert closing.answered == 100 and closing.errors == 0
    assert closing.reconnects == 100
    server = serve(chunked=True)
    chunked = openloop.run(server.url, 200, 0.5, connections=4, body='{"user_id":"hot"}')
    assert chunked.answered == chunked.ok == 100 and chunked.errors == 0
    assert set(server.bodies) == {b'{"user_id":"hot"}'}  # a body without %u goes as it is
