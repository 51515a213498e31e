"""redis-servers of the tests' own (and the benchmark's): how to start one, whether it answers."""

from __future__ import annotations

import contextlib
from pathlib import Path

import redis


def pings(client: redis.Redis) -> bool:
    with contextlib.suppress(redis.ConnectionError):
        return bool(client.ping())
    return False


def server_options(port: int, directory: Path, *, aof: bool = False) -> list[str]:
    """redis-server's options for a private server on loopback, keeping nothing on disk
    unless ``aof`` (then every write is fsynced before Redis replies). The tests'
    servers, the local cluster's nodes and the benchmark's server all start with it."""
    persistence = ["yes", "--appendfsync", "always"] if aof else ["no"]
    return [
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        *persistence,
        "--dir",
        str(directory),
    ]
