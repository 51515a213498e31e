"""Failover on the local Redis Cluster: the master holding taskhub's keys killed under load.

A real ``taskhub serve`` and ``taskhub worker`` run on the cluster while clients
submit back to back, each request for a user of its own. The master serving
the deployment's hash slot is SIGKILLed; the cluster promotes its replica by
itself (node timeout 1.5 s: nothing is forced). What the clients and the worker
must see (503 with Retry-After, never 500; recovery without a restart; every job
admitted before the kill, less the async-replication window, and after recovery
completes) is checked by tests/support/failover.py, shared with the Sentinel test.
The killed node is started again at the end and rejoins as a replica, so the
cluster is whole for the tests after this one. ``PYTEST_ARGS="-s -k test_failover"
make test`` prints the figures.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis

from taskhub.store.sharding import Shards
from tests.support.cluster import LocalCluster
from tests.support.configs import config_dict, crash_queue
from tests.support.failover import CONNECT_TIMEOUT, SOCKET_TIMEOUT, check, run_through_failover
from tests.support.namespaces import Namespace
from tests.support.replies import assert_quiet

# A process-level test of workers and Redis, and slow: it runs on the default server only,
# since what it sends over HTTP (POST /task) the HTTP tests check on every server.
pytestmark = pytest.mark.servers("sanic")


def shard_tag(ns: Namespace) -> str:
    """The hash tag of every key of this test's one-shard queue on a cluster."""
    return Shards(1, name=ns.queue, tagged=True).tag(0)


def forget_keys(cluster: LocalCluster, ns: Namespace) -> None:
    """Delete this test's keys (all under its one shard's hash tag, so on one master)."""
    tag = shard_tag(ns)
    node = cluster.master_for_key(tag)
    with node.client() as client:
        keys = list(client.scan_iter(match=f"*{tag}*", count=1000))
        if keys:
            client.delete(*keys)


def test_a_killed_master_means_503_then_recovery_and_no_lost_job(
    tmp_path: Path, cluster: LocalCluster, spawn
) -> None:
    ns = Namespace.new()
    config = config_dict(
        ns,
        cluster.url,
        limiter={"type": "token_bucket", "capacity": 5, "refill": 5, "period": 60},
        queue={**crash_queue(ns), "concurrency": 20},
    )
    config["redis"].update(
        cluster=True, connect_timeout=CONNECT_TIMEOUT, socket_timeout=SOCKET_TIMEOUT
    )
    master = cluster.master_for_key(shard_tag(ns))
    replica = cluster.replica_of(master)

    def promoted() -> bool:
        try:
            return replica.info("replication")["role"] == "master"
        except redis.RedisError:
            return False

    server = spawn(config, "serve", cwd=tmp_path / "server")
    worker = spawn(config, "worker", cwd=tmp_path / "worker", wait_for="started (worker)")
    try:
        replies, switch = asyncio.run(
            run_through_failover(server.url, lambda: cluster.kill(master), promoted)
        )
        print(server.output, "\n=====\n", worker.output)
        check(replies, switch, tmp_path / "worker" / "task.log")
        assert server.proc is not None and server.proc.poll() is None  # never restarted
        assert worker.proc is not None and worker.proc.poll() is None
        # the outage is one line when it starts and one when it ends, not one per request
        assert server.output.count("Redis (admission) is unreachable") == 1, server.output
        assert server.output.count("Redis (admission) is reachable again") == 1, server.output
        moved = f"slot(s) of {master.address} are now served by {replica.address}"
        assert server.output.count(moved) == 1, server.output
        assert_quiet(server)
        assert worker.stop() == 0
        assert_quiet(worker)
    finally:
        cluster.revive(master)
        forget_keys(cluster, ns)
