"""A store that comes back at a new address: its configured host names now resolve elsewhere.

The tests cannot edit /etc/hosts, so they resolve their host names themselves: the
process's ``socket.getaddrinfo``, which asyncio's default event loop resolves with
on every connect, maps each name to a loopback address of the test's choosing. The
store starts on 127.0.0.1; it is killed, a store is started on 127.0.0.2 on the same
ports, and the names are pointed there. The clients built before (redis-py's client
and cluster client, the pipelined script connection and the cluster router: what the
worker and the server use) must find it with no restart. Narrower than the process
test of a whole-store outage (tests/test_store_outage.py): in-process, on asyncio's
default loop rather than uvloop (whose resolver cannot be patched).

On redis-py's own terms the cluster client never finds a moved cluster again: it
replaces the configured seeds by the addresses the cluster reported (redis-py#2472).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from taskhub.config.models import RedisSettings
from taskhub.store.clients import connect, is_unavailable
from taskhub.store.cluster_router import ClusterPipeline
from taskhub.store.connection import connection_settings
from taskhub.store.pipeline import RedisPipeline
from tests.support.cluster import LocalCluster
from tests.support.redis_servers import PrivateRedis

pytestmark = pytest.mark.redis  # starts redis-servers of its own

TIMEOUT = 1.0
FOUND_WITHIN = 10.0  # seconds after the store is back at its new address
OLD, NEW = "127.0.0.1", "127.0.0.2"
SET = "return redis.call('SET', KEYS[1], ARGV[1])"


@pytest.fixture
def resolver(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Host name -> address, looked up instead of the system's (the rest as usual)."""
    table: dict[str, str] = {}
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        return real(table.get(host, host), *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return table


async def found(call: Callable[[], Awaitable[Any]]) -> float:
    """Seconds until ``call`` succeeds; every failure meanwhile must be an outage."""
    start = time.monotonic()
    while True:
        try:
            await call()
        except Exception as exc:
            assert is_unavailable(exc), repr(exc)
            assert time.monotonic() - start < FOUND_WITHIN, f"not found again: {exc!r}"
            await asyncio.sleep(0.1)
            continue
        return time.monotonic() - start


def settings_for(url: str, nodes: list[str] | None = None) -> Any:
    redis = RedisSettings(
        url=url,
        cluster=nodes is not None,
        nodes=nodes or [],
        connect_timeout=TIMEOUT,
        socket_timeout=TIMEOUT,
    )
    return connection_settings(redis)


@pytest.fixture
def moving_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path).start()
    yield server
    server.kill()


async def test_a_redis_back_at_a_new_address_is_found_by_its_name(
    moving_redis: PrivateRedis, resolver: dict[str, str]
) -> None:
    name = "redis.moved.test"
    resolver[name] = OLD
    settings = settings_for(f"redis://{name}:{moving_redis.port}/0")
    client = connect(settings)
    pipeline = RedisPipeline(settings)
    script = pipeline.script(SET)
    try:
        assert await client.set("moved:a", "1")
        assert await script(keys=["moved:b"], args=["1"]) == b"OK"

        moving_redis.kill()
        moving_redis.host = NEW
        moving_redis.start()
        resolver[name] = NEW

        took = await found(lambda: client.set("moved:a", "2"))
        took_script = await found(lambda: script(keys=["moved:b"], args=["2"]))
        with moving_redis.client() as direct:  # the new server, empty, got both writes
            assert direct.mget("moved:a", "moved:b") == [b"2", b"2"]
        print(f"\nsingle Redis moved: client back after {took:.2f} s, pipeline {took_script:.2f} s")
    finally:
        await client.aclose()
        await pipeline.close()


async def test_a_cluster_back_at_new_addresses_is_found_by_its_seed_names(
    resolver: dict[str, str],
) -> None:
    old = LocalCluster.start(replicas=0)
    ports = old.ports
    names = [f"node{i}.cluster.moved.test" for i in range(len(ports))]
    resolver.update(dict.fromkeys(names, OLD))
    seeds = [f"redis://{name}:{port}" for name, port in zip(names, ports, strict=True)]
    settings = settings_for(seeds[0], seeds[1:])
    client: Any = connect(settings)
    router = ClusterPipeline(settings)
    script = router.script(SET)
    key = "{moved}:a"
    new: LocalCluster | None = None
    try:
        assert await client.set(key, "1")
        assert await script(keys=["{moved}:b"], args=["1"]) == b"OK"

        old.stop()  # every node killed, its files gone
        new = LocalCluster.start(replicas=0, host=NEW, ports=ports)
        resolver.update(dict.fromkeys(names, NEW))

        took = await found(lambda: client.set(key, "2"))
        took_router = await found(lambda: script(keys=["{moved}:b"], args=["2"]))
        master = new.master_for_key(key)
        assert master.host == NEW
        with master.client() as direct:
            assert direct.mget(key, "{moved}:b") == [b"2", b"2"]
        print(
            f"\ncluster moved: cluster client back after {took:.2f} s, router {took_router:.2f} s"
        )
    finally:
        await client.aclose()
        await router.close()
        old.stop()
        if new is not None:
            new.stop()
