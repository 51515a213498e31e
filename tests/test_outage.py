"""Telling "Redis is unreachable" from a bug, and logging outages without flooding the log."""

from __future__ import annotations

import asyncio
import logging

import pytest
import uvloop
from redis import exceptions as rx
from redis.asyncio.connection import Connection

from taskhub.errors import BackendUnavailable
from taskhub.store.outage import OutageLog
from taskhub.store.unavailable import is_unavailable


async def write_to_a_closed_connection() -> RuntimeError:
    """What uvloop raises when redis-py writes to a socket Redis has closed (CLIENT KILL)."""
    server = await asyncio.start_server(lambda _, writer: writer.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.close()
    await asyncio.sleep(0.05)
    try:
        writer.writelines([b"PING\r\n"])
    except RuntimeError as exc:
        return exc
    finally:
        server.close()
    raise AssertionError("uvloop accepted a write to a closed transport")


def test_a_write_to_a_connection_closed_under_uvloop_is_unavailable() -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        error = runner.run(write_to_a_closed_connection())
    assert is_unavailable(error), error


def cluster_error(cause: BaseException | None) -> rx.RedisClusterException:
    """What redis-py's cluster client raises when no seed gave it a slot map."""
    error = rx.RedisClusterException(
        f"Redis Cluster cannot be connected. Please provide at least one reachable node: {cause}"
    )
    error.__cause__ = cause
    return error


async def test_a_redis_py_connection_closed_under_its_call_is_unavailable() -> None:
    """What a call meets when redis-py's cluster client disconnected its connection meanwhile
    (the cluster client disconnects every node on CLUSTERDOWN): its stream is gone."""
    connection = Connection()  # never connected: no stream, as after that disconnect
    with pytest.raises(AttributeError) as gone:
        await connection._send_packed_command([b"PING\r\n"])
    assert is_unavailable(gone.value), gone.value
    try:  # the same message raised anywhere else is a bug
        None.writelines  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as bug:
        assert not is_unavailable(bug)


@pytest.mark.parametrize(
    ("error", "unavailable"),
    [
        (rx.ConnectionError("Connection closed by server."), True),
        (rx.BusyLoadingError("Redis is loading the dataset in memory"), True),
        (ConnectionResetError(104, "Connection reset by peer"), True),
        (rx.ResponseError("LOADING Redis is loading the dataset in memory"), True),
        # a redirect the cluster router got again after following one: the map is moving
        (rx.ResponseError("MOVED 3999 127.0.0.1:30002"), True),
        (rx.ResponseError("ASK 3999 127.0.0.1:30002"), True),
        (rx.ResponseError("ERR Error running script: attempt to compare nil"), False),
        # redis-py's cluster client: no node answered (the cause says why), or a map that
        # does not cover every slot yet (a cluster coming back)
        (cluster_error(rx.ConnectionError("Error 111 connecting to 127.0.0.1:7000.")), True),
        (cluster_error(rx.TimeoutError("Timeout connecting to server")), True),
        (
            rx.RedisClusterException("All slots are not covered after query all startup_nodes."),
            True,
        ),
        (rx.SlotNotCoveredError('Slot "3999" not covered by the cluster.'), True),
        # ... but a node that is no cluster node is a config error, not an outage
        (
            cluster_error(rx.RedisClusterException("Cluster mode is not enabled on this node")),
            False,
        ),
        (cluster_error(None), False),
        # a component that already said "unavailable" (the queue's reads)
        (BackendUnavailable("Redis is unreachable: Connection refused"), True),
        (RuntimeError("Event loop is closed"), False),
        (RuntimeError("unable to perform operation; the handler is closed"), False),
        (ValueError("unable to perform operation on <TCPTransport>; the handler is closed"), False),
    ],
)
def test_only_errors_of_an_unreachable_redis_are_unavailable(
    error: Exception, unavailable: bool
) -> None:
    assert is_unavailable(error) is unavailable


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


DROPPED = rx.ConnectionError("Connection closed by server.")


@pytest.fixture
def outage(caplog: pytest.LogCaptureFixture) -> tuple[OutageLog, Clock]:
    caplog.set_level(logging.WARNING, logger="test.outage")
    clock = Clock()
    return OutageLog("Redis (test)", logging.getLogger("test.outage"), clock=clock), clock


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records]


def test_an_outage_is_logged_when_it_starts_and_ends_not_per_request(outage, caplog) -> None:
    log, clock = outage
    for _ in range(50):
        log.absorb(DROPPED)
        clock.now += 0.1
    log.succeeded()
    log.succeeded()
    assert lines(caplog) == [
        "Redis (test) is unreachable: Connection closed by server.",
        "Redis (test) is reachable again after 5.0 s",
    ]


def test_connections_dropped_over_and_over_are_counted_not_logged_each(outage, caplog) -> None:
    log, clock = outage
    for _ in range(101):  # one failed request each, 50 ms apart, for 5 s
        log.absorb(DROPPED)
        log.succeeded()
        clock.now += 0.05
    assert len(lines(caplog)) == 2  # the first, logged at once
    clock.now += 5
    log.absorb(DROPPED)  # 10 s after the last line: logged at once again, with the count
    assert lines(caplog)[2] == (
        "Redis (test) is unreachable: Connection closed by server. "
        "(100 brief outage(s) in the 10 s before were not logged one by one)"
    )


def test_an_outage_soon_after_another_is_logged_once_it_lasts(outage, caplog) -> None:
    log, clock = outage
    log.absorb(DROPPED)
    log.succeeded()
    clock.now += 2
    log.absorb(DROPPED)
    clock.now += 0.4
    log.absorb(DROPPED)
    assert len(lines(caplog)) == 2  # too soon and too short to tell from a dropped connection
    clock.now += 0.1
    log.absorb(DROPPED)
    clock.now += 1
    log.succeeded()
    assert lines(caplog)[2:] == [
        "Redis (test) is unreachable: Connection closed by server.",
        "Redis (test) is reachable again after 1.5 s",
    ]


def test_an_error_that_is_not_an_outage_is_raised_not_logged(outage, caplog) -> None:
    log, _ = outage
    with pytest.raises(rx.ResponseError):
        log.absorb(rx.ResponseError("ERR Error running script"))
    assert log.down_since is None and not caplog.records


async def test_a_call_in_an_outage_is_backend_unavailable_and_logged_once(outage, caplog) -> None:
    log, clock = outage

    async def dropped() -> None:
        raise DROPPED

    async def answered() -> str:
        return "PONG"

    for _ in range(20):
        with pytest.raises(BackendUnavailable, match="Redis is unreachable"):
            await log.call(dropped())
        clock.now += 0.1
    assert await log.call(answered()) == "PONG"
    assert lines(caplog) == [
        "Redis (test) is unreachable: Connection closed by server.",
        "Redis (test) is reachable again after 2.0 s",
    ]


async def test_a_bug_in_a_call_is_raised_as_it_is(outage, caplog) -> None:
    log, _ = outage

    async def bug() -> None:
        raise rx.ResponseError("ERR Error running script")

    with pytest.raises(rx.ResponseError):
        await log.call(bug())
    assert not caplog.records
