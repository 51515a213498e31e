"""Redis Sentinel on real servers: 1 master, 1 replica, 3 sentinels (tests/support/sentinel.py).

A real ``taskhub serve`` and ``taskhub worker`` find the master through the
sentinels, each reached with its own password (not the master's). The master is
SIGKILLed under load; the sentinels agree it is down (1 s) and promote the
replica by themselves. The clients and the worker must see what they see on a
cluster failover (tests/support/failover.py): 503 with Retry-After and never 500,
recovery without a restart, and every job admitted before (less the
async-replication window, counted) and after completes, the latter exactly once.
The others: the sentinels asked as a least-privilege ACL user, over TLS with a CA
of their own, skipped when dead or refusing, 503 when none answers; and a switch
while the old master still runs (``SENTINEL FAILOVER``), which every connection
must leave when the sentinels announce it. ``PYTEST_ARGS="-s tests/test_sentinel.py"
make test`` prints the figures.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from taskhub.config.models import RedisSettings, SentinelSettings
from taskhub.store.clients import connect, is_unavailable
from taskhub.store.cluster_router import admission_pipeline
from taskhub.store.connection import connection_settings
from taskhub.store.pipeline import RedisPipeline
from tests.support.configs import ROOT, config_dict, crash_queue, write_config
from tests.support.failover import CONNECT_TIMEOUT, SOCKET_TIMEOUT, check, run_through_failover
from tests.support.namespaces import Namespace
from tests.support.processes import TaskhubProcess, free_port, run_cli, wait_until
from tests.support.replies import assert_quiet, completions
from tests.support.sentinel import SENTINEL_PASSWORD, SERVICE, LocalSentinels, ReplicatedRedis
from tests.support.tls import TlsFiles

# Process-level tests of workers and Redis: on the default server only, since what they
# send over HTTP (POST /task) the HTTP tests check on every server.
pytestmark = pytest.mark.servers("sanic")


def sentinel_config(
    sentinels: LocalSentinels, ns: Namespace, nodes: list[str] | None = None, **sections: Any
) -> dict[str, Any]:
    config = config_dict(ns, sentinels.master_url(), **sections)
    config["redis"].update(
        sentinel={"service": SERVICE, "nodes": nodes or sentinels.sentinel_urls},
        connect_timeout=CONNECT_TIMEOUT,
        socket_timeout=SOCKET_TIMEOUT,
    )
    return config


def admits_and_runs(process: TaskhubProcess, log: Path) -> None:
    response = httpx.post(f"{process.url}/task", json={"user_id": "u1"}, timeout=10)
    assert response.status_code == 200, response.text
    job = response.json()["job_id"]
    assert wait_until(lambda: completions(log)[job] == 1, 15), process.output
    assert httpx.get(f"{process.url}/ready", timeout=10).status_code == 200


def test_jobs_go_to_the_master_the_sentinels_name(
    tmp_path: Path, sentinels: LocalSentinels, spawn
) -> None:
    ns = Namespace.new()
    # taskhub asks the sentinels as an ACL user allowed only what docs/redis.md lists.
    rule = ["+sentinel|masters", "+subscribe", "+ping", "&+switch-master"]
    page = (ROOT / "docs" / "redis.md").read_text()
    assert "`+sentinel|masters +subscribe +ping`" in page and "`'&+switch-master'`" in page
    for sentinel in sentinels.sentinels:
        with sentinel.client() as admin:
            admin.execute_command("ACL", "SETUSER", "taskhub", "on", ">watch-pw", "-@all", *rule)
    as_user = [f"redis://taskhub:watch-pw@127.0.0.1:{s.port}" for s in sentinels.sentinels]
    # A sentinel nobody runs and one that refuses the login come first: both are skipped.
    wrong_login = sentinels.sentinels[0].url.replace(SENTINEL_PASSWORD, "not-the-password")
    nodes = [f"redis://127.0.0.1:{free_port()}", wrong_login, *as_user]
    process = spawn(sentinel_config(sentinels, ns, nodes))
    admits_and_runs(process, tmp_path / "task.log")

    def watching() -> bool:  # subscribed to +switch-master as that user
        for sentinel in sentinels.sentinels:
            with sentinel.client() as admin:
                for info in admin.client_list():
                    if info["user"] == "taskhub" and info["sub"] == "1":
                        return True
        return False

    assert wait_until(watching, 5)
    with sentinels.master().client() as client:
        assert ns.keys(client), "no key of this test on the master"
    for secret in ("master-pw", "sentinel-pw", "watch-pw"):
        assert secret not in process.output
    assert f"redis: master {SERVICE!r} through sentinels 127.0.0.1:" in process.output
    assert process.stop() == 0
    assert_quiet(process)


def test_sentinels_over_tls_with_a_ca_of_their_own(tmp_path: Path, spawn) -> None:
    tls = TlsFiles.make(tmp_path / "pki")
    sentinels = LocalSentinels.start(tls=tls)
    try:
        nodes = [sentinel.tls_url(tls.ca) for sentinel in sentinels.sentinels]
        process = spawn(sentinel_config(sentinels, Namespace.new(), nodes))
        admits_and_runs(process, tmp_path / "task.log")
        assert process.stop() == 0
        assert_quiet(process)
    finally:
        sentinels.stop()


def test_no_sentinel_answering_means_503_and_the_log_says_why(
    tmp_path: Path, sentinels: LocalSentinels, spawn
) -> None:
    wrong_login = [url.replace(SENTINEL_PASSWORD, "nope") for url in sentinels.sentinel_urls]
    config = sentinel_config(sentinels, Namespace.new(), wrong_login)
    process = spawn(config, "serve")
    response = httpx.post(f"{process.url}/task", json={"user_id": "u1"}, timeout=10)
    assert response.status_code == 503, response.text
    assert response.headers["Retry-After"] == "1"
    ready = httpx.get(f"{process.url}/ready", timeout=10)
    assert ready.status_code == 503 and ready.json()["checks"]["redis"] == "unavailable"
    why = f"Redis (admission) is unreachable: No master found for {SERVICE!r}"
    assert process.wait_for(why, 5), process.output
    assert "nope" not in process.output
    assert_quiet(process)


def test_a_killed_master_means_503_then_recovery_and_no_lost_job(
    tmp_path: Path, sentinels: LocalSentinels, spawn
) -> None:
    ns = Namespace.new()
    config = sentinel_config(
        sentinels,
        ns,
        limiter={"type": "token_bucket", "capacity": 5, "refill": 5, "period": 60},
        queue={**crash_queue(ns), "concurrency": 20},
    )
    master = sentinels.master()
    replica = sentinels.replica_of(master)
    server = spawn(config, "serve", cwd=tmp_path / "server")
    worker = spawn(config, "worker", cwd=tmp_path / "worker", wait_for="started (worker)")
    replies, switch = asyncio.run(
        run_through_failover(
            server.url, lambda: sentinels.kill(master), lambda: replica.role() == "master"
        )
    )
    print(server.output, "\n=====\n", worker.output)
    check(replies, switch, tmp_path / "worker" / "task.log", "sentinel failover")
    assert sentinels.master() is replica  # the sentinels name the promoted replica
    assert server.proc is not None and server.proc.poll() is None  # never restarted
    assert worker.proc is not None and worker.proc.poll() is None
    # the outage is one line when it starts and one when it ends, not one per request
    assert server.output.count("Redis (admission) is unreachable") == 1, server.output
    assert server.output.count("Redis (admission) is reachable again") == 1, server.output
    assert_quiet(server)
    assert worker.stop() == 0
    assert_quiet(worker)


async def test_after_a_switch_both_kinds_of_connection_leave_the_old_master(
    sentinels: LocalSentinels,
) -> None:
    """``SENTINEL FAILOVER`` promotes the replica while the old master still runs: it
    takes writes until a sentinel demotes it, seconds later, and loses them then. Both
    kinds of connection must leave it when the sentinels announce the switch, reading
    what fails meanwhile as "unavailable", never as a bug, and write to the promoted
    replica from then on: the same objects, nothing rebuilt."""
    redis = RedisSettings(
        url=sentinels.master_url(),
        sentinel=SentinelSettings(service=SERVICE, nodes=sentinels.sentinel_urls),
    )
    settings = connection_settings(redis)
    assert settings is not None
    pipeline = admission_pipeline(settings)
    assert isinstance(pipeline, RedisPipeline)
    script = pipeline.script("return redis.call('INCR', KEYS[1])")
    client = connect(settings)
    old = sentinels.master()
    seen: list[str] = []

    async def eventually(call: Callable[[], Awaitable[int]]) -> int:
        deadline = time.monotonic() + 10
        while True:
            try:
                return await call()
            except Exception as exc:
                assert is_unavailable(exc), f"{type(exc).__name__}: {exc}"
                assert time.monotonic() < deadline, f"still failing: {exc}"
                seen.append(f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(0.05)

    try:
        assert await script(["pipelined"], []) == 1
        assert await client.incr("pooled") == 1
        with old.client() as direct:
            # Replication is asynchronous: a forced failover right after the writes may
            # promote a replica that has not had them yet (a CI run saw "pipelined"
            # missing on the new master); this test is about connections, not that loss.
            assert direct.execute_command("WAIT", 1, 5000) == 1, "the replica lags"
        with sentinels.sentinels[0].client() as sentinel:
            sentinel.execute_command("SENTINEL", "FAILOVER", SERVICE)
        assert wait_until(lambda: sentinels.master() is not old, 15), "no switch"
        named = time.monotonic()
        new = sentinels.master()
        await asyncio.sleep(0.2)  # the sentinels' announcement reaches this loop's watchers
        old_role = old.role()
        assert await eventually(lambda: script(["pipelined"], [])) == 2
        assert await eventually(lambda: client.incr("pooled")) == 2
        with new.client() as direct:
            assert direct.mget("pipelined", "pooled") == [b"2", b"2"]
        assert wait_until(lambda: old.role() == "slave", 15), "the old master stayed one"
        print(
            f"\nsentinel switch: the old master, a {old_role} when taskhub wrote again, was "
            f"demoted {time.monotonic() - named:.1f} s after the sentinels named the new one; "
            f"seen on the way: {seen}"
        )
    finally:
        await pipeline.close()
        await client.aclose()


async def test_a_master_demoted_behind_the_sentinels_backs_is_unavailable(
    tmp_path: Path, sentinels: LocalSentinels
) -> None:
    """The master is made a replica by hand, with no sentinel involved (nor their
    CLIENT KILL): the admission pipeline's next write hears READONLY, which must
    drop the connection and read as "unavailable" (503), and the reconnect, sent by
    the sentinels to the same server still, must refuse it on its ROLE."""
    settings = connection_settings(
        RedisSettings(
            url=sentinels.master_url(),
            sentinel=SentinelSettings(service=SERVICE, nodes=sentinels.sentinel_urls),
        )
    )
    assert settings is not None
    pipeline = admission_pipeline(settings)
    assert isinstance(pipeline, RedisPipeline)
    script = pipeline.script("return redis.call('INCR', KEYS[1])")
    elsewhere = ReplicatedRedis(tmp_path / "elsewhere").start()
    try:
        assert await script(["demoted"], []) == 1
        with sentinels.master().client() as master:
            master.replicaof("127.0.0.1", elsewhere.port)
        with pytest.raises(RedisConnectionError, match="is a replica now: READONLY") as lost:
            await script(["demoted"], [])
        assert is_unavailable(lost.value)
        with pytest.raises(RedisConnectionError, match="named master by the sentinels, is a sl"):
            await script(["demoted"], [])
    finally:
        await pipeline.close()
        elsewhere.kill()


def test_an_evicting_master_is_named_by_its_service_and_where_it_is(
    tmp_path: Path, sentinels: LocalSentinels
) -> None:
    """The eviction check names the master the sentinels named and where it was found,
    not redis.url's host and port (the service's name and a default port there), and its
    fix covers the replicas they may promote."""
    master = sentinels.master()
    with master.client() as direct:
        direct.config_set("maxmemory-policy", "allkeys-lru")
    config = sentinel_config(sentinels, Namespace.new())
    result = run_cli(["check", str(write_config(tmp_path, config))], tmp_path)
    assert result.returncode == 0, result.stderr
    named = (
        f"maxmemory-policy is allkeys-lru on the master of {SERVICE!r} at "
        f"127.0.0.1:{master.port} (redis.url), not noeviction"
    )
    assert named in result.stderr, result.stderr
    assert "on each replica the sentinels may promote" in result.stderr, result.stderr
    assert f"{SERVICE}:6379" not in result.stderr, result.stderr
