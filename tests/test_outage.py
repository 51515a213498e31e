"""Telling "Redis is unreachable" from a bug, and logging outages without flooding the log."""

from __future__ import annotations

import asyncio

import pytest
import uvloop
from redis import exceptions as rx

from taskhub.redis_client import is_unavailable


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


@pytest.mark.parametrize(
    ("error", "unavailable"),
    [
        (rx.ConnectionError("Connection closed by server."), True),
        (rx.BusyLoadingError("Redis is loading the dataset in memory"), True),
        (ConnectionResetError(104, "Connection reset by peer"), True),
        (rx.ResponseError("LOADING Redis is loading the dataset in memory"), True),
        (rx.ResponseError("ERR Error running script: attempt to compare nil"), False),
        (RuntimeError("Event loop is closed"), False),
        (RuntimeError("unable to perform operation; the handler is closed"), False),
        (ValueError("unable to perform operation on <TCPTransport>; the handler is closed"), False),
    ],
)
def test_only_errors_of_an_unreachable_redis_are_unavailable(
    error: Exception, unavailable: bool
) -> None:
    assert is_unavailable(error) is unavailable
