"""Failover on the local Redis Cluster: the master holding taskhub's keys killed under load.

A real ``taskhub serve`` and ``taskhub worker`` run on the cluster while clients
submit back to back, each request for a user of its own. The master serving
the deployment's hash slot is SIGKILLed; the cluster promotes its replica by
itself (node timeout 1.5 s: nothing is forced). Meanwhile:

- the server answers 503 with Retry-After, never 500, and never takes longer
  than the configured Redis timeouts to answer; ``/ready`` says not ready and why;
- once the replica serves, 200s come back, with neither process restarted;
- every job admitted before the kill, and every job admitted after recovery,
  completes; the ones admitted after recovery exactly once.

Redis replicates asynchronously: a job acknowledged in the last moments before
the kill may never have reached the replica. Those whose 200 came less than
``REPLICATION_WINDOW`` before the kill are exempt from "completes"; the test
counts how many there were and how many were lost. The killed node is started
again at the end and rejoins as a replica, so the cluster is whole for the tests
after this one. ``PYTEST_ARGS="-s -k test_failover" make test`` prints the figures.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from taskhub.store.sharding import Shards
from tests.support.cluster import LocalCluster, Node
from tests.support.configs import config_dict, crash_queue
from tests.support.namespaces import Namespace
from tests.support.processes import wait_until
from tests.support.replies import (
    Reply,
    assert_503s_are_well_formed,
    assert_quiet,
    completions,
    submit,
)

# A process-level test of workers and Redis, and slow: it runs on the default server only,
# since what it sends over HTTP (POST /task) the HTTP tests check on every server.
pytestmark = pytest.mark.servers("sanic")

CLIENTS = 12
WARM_UP = 1.5  # seconds of load before the kill
AFTER = 2.5  # seconds of load once the replica serves
PROMOTION_TIMEOUT = 15.0  # the cluster promotes in about 2-4 s with a 1.5 s node timeout
RECOVERY = 5.0  # seconds after the promotion by which the server admits again
SETTLED = 1.0  # ... and after which it answers nothing but 200
CONNECT_TIMEOUT = SOCKET_TIMEOUT = 1.0
SLACK = 1.5  # what a loaded 2-core machine may add to an answer
REPLICATION_WINDOW = 0.25  # seconds: 200s this close before the kill may be lost


@dataclass
class Switch:
    """The failover's moments, on the monotonic clock."""

    killed: float = 0.0  # just before SIGKILL
    promoted: float = 0.0  # the replica says it is a master
    ready: list[tuple[float, int, dict[str, Any]]] = field(default_factory=list)


def kill_and_wait_for_promotion(
    cluster: LocalCluster, master: Node, replica: Node, switch: Switch
) -> None:
    time.sleep(WARM_UP)
    switch.killed = time.monotonic()
    cluster.kill(master)

    def promoted() -> bool:
        try:
            return replica.info("replication")["role"] == "master"
        except redis.RedisError:
            return False

    assert wait_until(promoted, PROMOTION_TIMEOUT, 0.02), "the cluster did not promote"
    switch.promoted = time.monotonic()
    time.sleep(AFTER)


async def load(url: str, done: threading.Event) -> list[Reply]:
    """CLIENTS clients submitting back to back, each request for a new user."""
    replies: list[Reply] = []
    users = itertools.count()

    async def client(http: httpx.AsyncClient) -> None:
        while not done.is_set():
            replies.append(await submit(http, url, f"u{next(users)}", None))

    async with httpx.AsyncClient(timeout=10) as http:
        await asyncio.gather(*(client(http) for _ in range(CLIENTS)))
    return replies


async def probe_ready(url: str, done: threading.Event, switch: Switch) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        while not done.is_set():
            response = await http.get(f"{url}/ready")
            switch.ready.append((time.monotonic(), response.status_code, response.json()))
            await asyncio.sleep(0.1)


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
    server = spawn(config, "serve", cwd=tmp_path / "server")
    worker = spawn(config, "worker", cwd=tmp_path / "worker", wait_for="started (worker)")
    try:
        replies, switch = asyncio.run(run_through_failover(server.url, cluster, master, replica))
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


async def run_through_failover(
    url: str, cluster: LocalCluster, master: Node, replica: Node
) -> tuple[list[Reply], Switch]:
    switch, done = Switch(), threading.Event()

    async def failover() -> None:
        try:
            await asyncio.to_thread(kill_and_wait_for_promotion, cluster, master, replica, switch)
        finally:
            done.set()

    replies, *_ = await asyncio.gather(load(url, done), probe_ready(url, done, switch), failover())
    return replies, switch


def check(replies: list[Reply], switch: Switch, log: Path) -> None:
    statuses = Counter(r.status for r in replies)
    assert set(statuses) <= {200, 503}, statuses  # no 500, no 429, no dropped client
    assert_503s_are_well_formed(replies)
    slowest = max(r.answered - r.sent for r in replies)
    assert slowest < CONNECT_TIMEOUT + SOCKET_TIMEOUT + SLACK, f"an answer took {slowest:.2f} s"

    # during the switch: 503s, no 200 (nobody serves the slot)
    during = [r for r in replies if switch.killed < r.sent and r.answered < switch.promoted]
    assert during and all(r.status == 503 for r in during), Counter(r.status for r in during)
    recovered = min(
        (r.answered for r in replies if r.status == 200 and r.sent > switch.promoted),
        default=None,
    )
    assert recovered is not None, "no 200 after the promotion"
    assert recovered - switch.promoted < RECOVERY
    late = [r for r in replies if r.sent > recovered + SETTLED]
    assert late and all(r.status == 200 for r in late), Counter(r.status for r in late)

    # /ready: not ready with a reason during the switch, ready again after
    down = [body for at, status, body in switch.ready if status == 503]
    assert down and all(body["reason"] for body in down), switch.ready
    assert switch.ready[-1][1] == 200, switch.ready[-1]

    before = {r.job_id for r in replies if r.status == 200 and r.answered < switch.killed}
    window = {
        r.job_id
        for r in replies
        if r.status == 200
        and r.answered >= switch.killed - REPLICATION_WINDOW
        and r.sent < switch.promoted
    }
    after = {r.job_id for r in replies if r.status == 200 and r.sent > switch.promoted}
    must = (before - window) | after
    wait_until(lambda: must <= set(completions(log)), 30, interval=0.2)
    time.sleep(0.5)  # a second run of a job, if there were one, has time to show up
    lines = completions(log)
    duplicates = {job for job, n in lines.items() if n > 1}
    print(
        f"\nfailover: requests={len(replies)} by status={dict(sorted(statuses.items()))} "
        f"admitted before the kill={len(before)} (of which in the last "
        f"{REPLICATION_WINDOW * 1000:.0f} ms={len(window)}, lost={len(window - set(lines))}) "
        f"after recovery={len(after)} promotion after {switch.promoted - switch.killed:.2f} s "
        f"first 200 after {recovered - switch.killed:.2f} s slowest answer={slowest:.2f} s "
        f"completed={len(set(lines) & (before | after))} run twice={len(duplicates)} "
        f"ready probes not ready={len(down)}"
    )
    assert must <= set(lines), f"{len(must - set(lines))} admitted jobs never completed"
    assert not duplicates & after, "a job admitted after recovery ran twice"
