"""Shared fixtures. Tests that need Redis use the real one and fail (never skip) without it.

Every test that needs Redis carries the ``redis`` marker, so ``make test-fast``
(``-m "not redis"``) runs the rest in seconds with no Redis at all. The marker is
put on at collection, on every test whose fixtures include one of REDIS_FIXTURES
directly or through other fixtures; a test that gets one only at run time
(``request.getfixturevalue``) without the marker fails, naming itself
(tests/support/fixture_marker.py). A test that starts a redis-server or opens a
connection by itself, with none of these fixtures, is marked by hand."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from taskhub.builtin.saq.redis_queue import HardenedRedisQueue
from taskhub.config.models import RedisSettings
from taskhub.store.cluster_router import ClusterPipeline, admission_pipeline
from taskhub.store.connection import connection_settings
from tests.support.backends import client_on
from tests.support.cluster import LocalCluster
from tests.support.configs import SERVER_TYPES, config_dict, served_by, write_config
from tests.support.fixture_marker import FixtureMarker
from tests.support.namespaces import Namespace
from tests.support.processes import TaskhubProcess
from tests.support.redis_servers import REDIS_URL, START_REDIS_HINT, PrivateRedis
from tests.support.sentinel import LocalSentinels

# The fixtures below that reach a Redis (the shared one, a private redis-server, the
# local cluster) or start taskhub processes that do; test modules' own fixtures that
# use them are covered through them, and so are test modules' own ``client`` fixtures.
REDIS_FIXTURES = frozenset(
    {
        "redis_url",
        "sync_redis",
        "client",
        "queue",
        "ns",
        "live_server",
        "private_redis",
        "aof_redis",
        "spawn",
        "cluster",
        "sentinels",
    }
)


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(FixtureMarker("redis", REDIS_FIXTURES), "taskhub-redis-marker")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test that starts a server (``server_type``, through ``spawn``, ``live_server``
    or directly) runs on each server plugin, or on those its ``servers`` marker names."""
    if "server_type" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("servers")
    names = marker.args if marker else SERVER_TYPES
    metafunc.parametrize("server_type", names, ids=names, indirect=True, scope="module")


@pytest.fixture(scope="module")
def server_type(request: pytest.FixtureRequest) -> str:
    """The HTTP server plugin the test's taskhub processes serve with."""
    return str(request.param)


@pytest.fixture(scope="session")
def redis_url() -> str:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis is not reachable at {REDIS_URL} ({exc}): {START_REDIS_HINT}")
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture
def sync_redis(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
async def client(request: pytest.FixtureRequest) -> AsyncIterator[aioredis.Redis]:
    """An asyncio client on the shared Redis (test_limiters and test_policies override it
    to run on the test cluster too)."""
    conn = client_on("single", request)
    yield conn
    await conn.aclose()


@pytest.fixture
async def queue(
    ns: Namespace, redis_url: str, request: pytest.FixtureRequest
) -> AsyncIterator[HardenedRedisQueue]:
    """The worker's queue on the shared Redis, with the test module's ``HEARTBEAT``."""
    queue = HardenedRedisQueue(
        aioredis.Redis.from_url(redis_url), ns.queue, request.module.HEARTBEAT, 60
    )
    await queue.connect()
    yield queue
    await queue.disconnect()


@pytest.fixture
def ns(sync_redis: redis.Redis) -> Iterator[Namespace]:
    """A namespace of keys on the shared Redis, removed after the test (only its own keys)."""
    namespace = Namespace.new()
    yield namespace
    namespace.cleanup(sync_redis)


@pytest.fixture(scope="module")
def live_server(
    redis_url: str, tmp_path_factory: pytest.TempPathFactory, server_type: str
) -> Iterator[tuple[str, Namespace]]:
    """One ``taskhub serve`` on the shared Redis for a whole module, in its own namespace."""
    ns = Namespace.new()
    directory = tmp_path_factory.mktemp("serve")
    config = write_config(directory, config_dict(ns, redis_url, server_type))
    process = TaskhubProcess(["serve", str(config)], cwd=directory).start()
    client = redis.Redis.from_url(redis_url)
    try:
        yield process.url, ns
    finally:
        process.kill()
        ns.cleanup(client)
        client.close()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
def aof_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A private redis-server that keeps every acknowledged write across stop/kill/start."""
    directory = tmp_path / "redis"
    directory.mkdir()
    server = PrivateRedis(directory, aof=True).start()
    yield server
    server.stop()


@pytest.fixture
def spawn(tmp_path: Path, server_type: str) -> Iterator[Callable[..., TaskhubProcess]]:
    """Start ``taskhub COMMAND config`` in a directory, served by the test's ``server_type``;
    kill whatever still runs afterwards."""
    started: list[TaskhubProcess] = []

    def start(
        config: dict[str, Any],
        command: str = "run",
        cwd: Path | None = None,
        wait_for: str = "listening on ",
    ) -> TaskhubProcess:
        directory = cwd or tmp_path
        directory.mkdir(parents=True, exist_ok=True)
        path = write_config(directory, served_by(config, server_type))
        process = TaskhubProcess([command, str(path)], cwd=directory)
        started.append(process)
        return process.start(wait_for)

    yield start
    for process in started:
        process.kill()


@pytest.fixture(scope="session")
def cluster() -> Iterator[LocalCluster]:
    """A local Redis Cluster (3 masters, 3 replicas), started on first use, shared by the
    session: tests keep to their own keys, and a test that kills or promotes nodes
    must leave every slot served (see tests/support/cluster.py)."""
    try:
        local = LocalCluster.start()
    except FileNotFoundError as exc:
        pytest.skip(f"no test cluster: {exc}: {START_REDIS_HINT}")
    yield local
    local.stop()


@pytest.fixture
def sentinels() -> Iterator[LocalSentinels]:
    """A master, its replica and 3 sentinels of the test's own (a failover test leaves
    them changed), all stopped at the end (see tests/support/sentinel.py)."""
    local = LocalSentinels.start()
    yield local
    local.stop()


@pytest.fixture
async def router(cluster: LocalCluster) -> AsyncIterator[ClusterPipeline]:
    """The admission path's slot router on the local cluster."""
    pipeline = admission_pipeline(connection_settings(RedisSettings(url=cluster.url, cluster=True)))
    assert isinstance(pipeline, ClusterPipeline)
    yield pipeline
    await pipeline.close()
