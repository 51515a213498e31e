"""HTTP/1.1 as every server plugin must speak it, on raw sockets: keep-alive, pipelining,
limits refused early (413, 431), request smuggling (400), chunked bodies, 100-continue,
HTTP/1.0, garbage, slow clients (408) and many of them at once.

Each test runs against each server (``[sanic]``, ``[httptools]``): one ``taskhub serve``
per server for the module, with a small body limit and a short request timeout. Every
refusal must be the API's JSON error (``context.http.error``), with a request id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import select
import statistics
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import orjson
import pytest
import redis

from tests.support.configs import config_dict, write_config
from tests.support.http_wire import Answer, Wire, chunked, request
from tests.support.namespaces import Namespace
from tests.support.processes import TaskhubProcess

BODY_LIMIT = 1024
REQUEST_TIMEOUT = 1.5
SUBMIT = orjson.dumps({"user_id": "http11"})
HEALTH = request("GET", "/health")
SLOW_CLIENTS = 2_000


@contextlib.contextmanager
def serving(
    factory: pytest.TempPathFactory, redis_url: str, server_type: str, **server: object
) -> Iterator[str]:
    """``taskhub serve`` on ``server_type`` with these server options, in a namespace of its
    own; its URL. Afterwards it must not have logged a traceback."""
    ns = Namespace.new()
    config = config_dict(ns, redis_url, server_type=server_type)
    config["server"].update(server)
    # Every user may submit as often as the tests do.
    config["limiter"] = {"type": "token_bucket", "capacity": 10_000, "refill": 10_000, "period": 1}
    directory = factory.mktemp(server_type)
    process = TaskhubProcess(["serve", str(write_config(directory, config))], cwd=directory)
    client = redis.Redis.from_url(redis_url)
    try:
        yield process.start().url
        assert "Traceback" not in process.output, process.output
    finally:
        process.kill()
        ns.cleanup(client)
        client.close()


@pytest.fixture(scope="module")
def server(
    redis_url: str, tmp_path_factory: pytest.TempPathFactory, server_type: str
) -> Iterator[str]:
    limits = {"body_limit": BODY_LIMIT, "request_timeout": REQUEST_TIMEOUT}
    with serving(tmp_path_factory, redis_url, server_type, **limits) as url:
        yield url


@pytest.fixture
def wire(server: str) -> Iterator[Wire]:
    connection = Wire.open(server)
    yield connection
    connection.close()


def assert_api_error(answer: Answer, status: int, code: str) -> None:
    """A refusal is the API's: its JSON body, its request id, and the connection closes."""
    assert answer.status == status, answer
    assert answer.json()["error"] == code, answer
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers.get("x-request-id"), answer.headers
    assert answer.headers["connection"] == "close"


def assert_closes(wire: Wire, within: float = 5) -> None:
    wire.sock.settimeout(within)
    assert wire.closed()


def test_keep_alive_answers_several_requests_on_one_connection(wire: Wire) -> None:
    for _ in range(3):
        wire.send(HEALTH)
        answer = wire.read()
        assert (answer.status, answer.json()) == (200, {"status": "ok"})
        assert answer.headers["connection"] == "keep-alive"


def test_pipelined_requests_are_answered_in_order(wire: Wire) -> None:
    ids = [f"pipelined{n:04d}" for n in range(6)]
    json = {"Content-Type": "application/json"}
    requests = [
        request("POST", "/task", SUBMIT, {**json, "X-Request-ID": ids[0]}),
        request("GET", "/nope", headers={"X-Request-ID": ids[1]}),
        request("GET", "/health", headers={"X-Request-ID": ids[2]}),
        request("DELETE", "/health", headers={"X-Request-ID": ids[3]}),
        request("POST", "/task", SUBMIT, {**json, "X-Request-ID": ids[4]}),
        request("GET", "/health", headers={"X-Request-ID": ids[5]}),
    ]
    wire.send(b"".join(requests))
    answers = [wire.read() for _ in ids]
    assert [a.headers["x-request-id"] for a in answers] == ids
    assert [a.status for a in answers] == [200, 404, 200, 405, 200, 200]
    assert answers[0].json()["job_id"] != answers[4].json()["job_id"]


def test_header_values_are_read_without_their_surrounding_blanks(wire: Wire) -> None:
    """A field value excludes its surrounding whitespace (RFC 9110, 5.5): the same
    Idempotency-Key with blanks around it names the same job on every server, and a
    padded Content-Type is still JSON."""
    json = {"Content-Type": " application/json \t"}
    sent = [
        request("POST", "/task", SUBMIT, {**json, "Idempotency-Key": key})
        for key in ("padded-1", "padded-1  ", " \tpadded-1\t")
    ]
    wire.send(b"".join(sent))
    answers = [wire.read() for _ in sent]
    assert [answer.status for answer in answers] == [200, 200, 200], answers
    assert len({answer.json()["job_id"] for answer in answers}) == 1, answers


def test_a_body_over_the_limit_is_refused_before_it_is_read(wire: Wire) -> None:
    head = request("POST", "/task", headers={"Content-Length": str(1 << 30)})
    wire.send(head + b"x" * 4096)  # a 1 GiB body, of which 4 KiB is ever sent
    assert_api_error(wire.read(), 413, "payload_too_large")
    assert_closes(wire)


def test_a_chunked_body_over_the_limit_is_refused(wire: Wire) -> None:
    head = request("POST", "/task", headers={"Transfer-Encoding": "chunked"})
    wire.send(head + chunked(b"x" * (BODY_LIMIT * 4), 512)[:-5])  # never finished
    assert_api_error(wire.read(), 413, "payload_too_large")
    assert_closes(wire)


def test_a_chunked_body_is_read_whole(wire: Wire) -> None:
    framing = {"Transfer-Encoding": "chunked", "Content-Type": "application/json"}
    wire.send(request("POST", "/task", headers=framing) + chunked(SUBMIT, 5))
    answer = wire.read()
    assert answer.status == 200, answer
    assert answer.json()["status"] == "queued"
    wire.send(HEALTH)  # and the connection goes on
    assert wire.read().status == 200


def test_oversized_headers_get_431(wire: Wire) -> None:
    wire.send(request("GET", "/health", headers={"X-Big": "a" * 20_000}))
    assert_api_error(wire.read(), 431, "request_header_fields_too_large")
    assert_closes(wire)


def test_oversized_headers_arriving_in_pieces_get_431(wire: Wire) -> None:
    wire.send(b"GET /health HTTP/1.1\r\nHost: test\r\n")
    try:
        for n in range(40):
            wire.send(b"X-Part-%d: %b\r\n" % (n, b"a" * 1000))
            time.sleep(0.005)
    except (BrokenPipeError, ConnectionResetError):
        pass  # refused while still sending: the answer is already there
    assert_api_error(wire.read(), 431, "request_header_fields_too_large")


def test_content_length_with_transfer_encoding_is_400(wire: Wire) -> None:
    smuggled = request("GET", "/health")
    body = chunked(SUBMIT, 64)
    head = request(
        "POST",
        "/task",
        headers={"Content-Length": str(len(body)), "Transfer-Encoding": "chunked"},
    )
    wire.send(head + body + smuggled)
    assert_api_error(wire.read(), 400, "bad_request")
    assert_closes(wire)


def test_expect_100_continue_gets_100_then_the_answer(wire: Wire) -> None:
    head = request(
        "POST",
        "/task",
        headers={
            "Content-Type": "application/json",
            "Content-Length": str(len(SUBMIT)),
            "Expect": "100-continue",
        },
    )
    wire.send(head)
    assert wire.read().status == 100
    wire.send(SUBMIT)
    answer = wire.read()
    assert answer.status == 200, answer


def test_expect_100_continue_over_the_limit_gets_413_instead(wire: Wire) -> None:
    head = request(
        "POST", "/task", headers={"Content-Length": str(BODY_LIMIT * 10), "Expect": "100-continue"}
    )
    wire.send(head)
    assert_api_error(wire.read(), 413, "payload_too_large")  # no 100 before it
    assert_closes(wire)


def test_http_1_0_is_answered_and_closed(wire: Wire) -> None:
    wire.send(request("GET", "/health", version="1.0"))
    answer = wire.read()
    assert answer.status == 200
    assert answer.headers["connection"] == "close"
    assert_closes(wire)


def test_http_1_0_keeps_alive_when_asked(wire: Wire) -> None:
    asked = request("GET", "/health", headers={"Connection": "keep-alive"}, version="1.0")
    for _ in range(2):
        wire.send(asked)
        answer = wire.read()
        assert answer.status == 200
        assert answer.headers["connection"] == "keep-alive"


def test_garbage_gets_400(wire: Wire) -> None:
    wire.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http at all\r\n\r\n")
    assert_api_error(wire.read(), 400, "bad_request")
    assert_closes(wire)


def test_headers_that_trickle_in_are_cut_off_after_the_request_timeout(wire: Wire) -> None:
    started = time.monotonic()
    wire.send(b"GET /health HTTP/1.1\r\n")
    deadline = started + REQUEST_TIMEOUT + 5
    # A byte every 0.1 s, until the server answers or closes.
    while not select.select([wire.sock], [], [], 0.1)[0] and time.monotonic() < deadline:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            wire.send(b"X")
    elapsed = time.monotonic() - started
    assert REQUEST_TIMEOUT * 0.9 <= elapsed < REQUEST_TIMEOUT + 2, elapsed
    wire.sock.settimeout(5)
    if wire._fill():  # a 408 is the polite way; a close will do
        assert_api_error(wire.read(), 408, "request_timeout")
    assert_closes(wire)


# --------------------------------------------------------------------------- slow clients


def raise_open_files_limit(needed: int) -> None:
    """Raise this process's soft limit on open files (servers started after inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"{needed} open files needed and the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


async def latencies(url: str, count: int) -> list[float]:
    """Seconds per GET /health, one after another on one keep-alive connection."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    taken = []
    for _ in range(count):
        started = time.perf_counter()
        writer.write(HEALTH)
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(15)  # {"status":"ok"}
        taken.append(time.perf_counter() - started)
    writer.close()
    return taken


async def with_slow_clients(url: str, count: int) -> tuple[list[float], int]:
    """Latencies while ``count`` clients send their headers a byte at a time; and how many
    of them the server still holds open at the end."""
    parts = urlsplit(url)
    slow = []
    for _ in range(count):
        _, writer = await asyncio.open_connection(parts.hostname, parts.port)
        writer.write(b"POST /task HTTP/1.1\r\nHost: test\r\n")
        slow.append(writer)
    stop = asyncio.Event()

    async def trickle() -> None:
        while not stop.is_set():
            for writer in slow:
                if not writer.is_closing():
                    writer.write(b"X")
            await asyncio.sleep(0.25)

    trickling = asyncio.create_task(trickle())
    await asyncio.sleep(0.5)
    try:
        taken = await latencies(url, 300)
    finally:
        stop.set()
        await trickling
    open_count = sum(not w.transport.is_closing() for w in slow)
    for writer in slow:
        writer.transport.abort()
    return taken, open_count


@pytest.fixture(scope="module")
def patient_server(
    redis_url: str, tmp_path_factory: pytest.TempPathFactory, server_type: str
) -> Iterator[str]:
    """A server with a long request timeout, so slow clients stay for the whole test."""
    raise_open_files_limit(SLOW_CLIENTS * 2 + 512)
    options = {"request_timeout": 30, "backlog": 4096}
    with serving(tmp_path_factory, redis_url, server_type, **options) as url:
        yield url


def test_two_thousand_slow_clients_do_not_slow_the_others(patient_server: str) -> None:
    before = asyncio.run(latencies(patient_server, 300))
    during, still_open = asyncio.run(with_slow_clients(patient_server, SLOW_CLIENTS))
    after = asyncio.run(latencies(patient_server, 300))
    runs = {"before": before, "during": during, "after": after}
    median = {name: round(statistics.median(v) * 1000, 3) for name, v in runs.items()}
    p99 = {name: round(statistics.quantiles(v, n=100)[98] * 1000, 3) for name, v in runs.items()}
    logging.getLogger(__name__).warning(
        "GET /health latency, ms: median %s, p99 %s; slow clients held: %d", median, p99, still_open
    )
    assert still_open == SLOW_CLIENTS  # held, not dropped to make room
    baseline = max(median["before"], median["after"])
    assert median["during"] < baseline * 3 + 2, (median, p99)
