"""A stopping server refuses new connections but finishes the requests already in flight.

A request is held "in flight" by sending its headers and only part of its body; the
test stops the server, checks that new connections are refused, then sends the rest
and expects a normal 200 with the job stored. A request that is still incomplete when
``graceful_shutdown`` runs out is cut off and stores nothing.
"""

from __future__ import annotations

import signal
import socket
import time
from urllib.parse import urlsplit

import orjson
import redis

from tests.support.configs import config_dict
from tests.support.http_requests import open_request, read_response
from tests.support.namespaces import Namespace
from tests.support.processes import TaskhubProcess, wait_until

BODY = orjson.dumps({"user_id": "in-flight"})


def closed_without_response(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:  # an abort may reset rather than close
        return True


def refuses_connections(url: str) -> bool:
    parts = urlsplit(url)
    try:
        socket.create_connection((parts.hostname, parts.port), timeout=1).close()
    except OSError:
        return True
    return False


def serve_with_a_request_in_flight(
    ns: Namespace, redis_url: str, spawn, grace: float
) -> tuple[TaskhubProcess, socket.socket]:
    config = config_dict(ns, redis_url)
    config["server"]["graceful_shutdown"] = grace
    server = spawn(config, "serve")
    pending = open_request(server.url, BODY)
    time.sleep(0.2)  # the server has read the headers and waits for the body
    return server, pending


def test_a_stopping_server_finishes_requests_in_flight_and_takes_no_new_ones(
    ns: Namespace, redis_url: str, spawn, sync_redis: redis.Redis
) -> None:
    server, pending = serve_with_a_request_in_flight(ns, redis_url, spawn, grace=5)
    server.proc.send_signal(signal.SIGTERM)
    assert wait_until(lambda: refuses_connections(server.url), 5), server.output
    pending.sendall(BODY[-1:])
    status, body = read_response(pending)
    pending.close()

    assert status == 200, body
    assert sync_redis.exists(f"saq:job:{ns.queue}:{body['job_id']}")
    assert server.wait(10) == 0, server.output
    assert "Traceback" not in server.output


def test_a_request_unfinished_after_the_grace_is_cut_off_and_stores_nothing(
    ns: Namespace, redis_url: str, spawn, sync_redis: redis.Redis
) -> None:
    server, pending = serve_with_a_request_in_flight(ns, redis_url, spawn, grace=0.5)
    started = time.monotonic()
    assert server.stop(signal.SIGTERM) == 0, server.output
    assert time.monotonic() - started < 5
    assert closed_without_response(pending)
    pending.close()
    assert ns.queued(sync_redis) == 0
    assert not sync_redis.exists(f"saq:{ns.queue}:incomplete")
