"""The ledger: every 200 completes at least once while workers are SIGKILLed under load.

2,000 submissions from 95 users go to a ``taskhub serve`` process over HTTP
while a separate ``taskhub worker`` is killed with SIGKILL and restarted five
times. Afterwards every job id that got a 200 has a completion line in
task.log, no refused request has one, and nothing is a dead letter.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
import redis

from tests.support.configs import config_dict, crash_queue
from tests.support.namespaces import Namespace
from tests.support.plugin_sources import delivery_plugins
from tests.support.processes import TaskhubProcess, wait_until

# A process-level test of workers and Redis, and slow: it runs on the default server only,
# since what it sends over HTTP (POST /task) the HTTP tests check on every server.
pytestmark = pytest.mark.servers("sanic")

NORMAL_USERS, NORMAL_REQUESTS = 90, 20  # within the limit: all admitted
HEAVY_USERS, HEAVY_REQUESTS = 5, 40  # over it: 25 admitted each, then 429s
CAPACITY = 25
KILLS = 5
LOAD_SECONDS = 10.0  # the submissions are spread over this long, so kills land mid-load
JOB_SECONDS = 0.05  # each job sleeps this long, so a kill finds jobs in flight


async def submit_all(url: str) -> tuple[set[str], int]:
    """Send every request at a steady pace; returns the admitted job ids and the 429 count."""
    users = [f"user{i}" for i in range(NORMAL_USERS) for _ in range(NORMAL_REQUESTS)]
    users += [f"heavy{i}" for i in range(HEAVY_USERS) for _ in range(HEAVY_REQUESTS)]
    random.Random(277).shuffle(users)
    admitted: set[str] = set()
    refused = 0
    pace = LOAD_SECONDS / len(users)
    start = time.monotonic()
    gate = asyncio.Semaphore(32)
    body = {"task": "sleepy", "payload": {"seconds": JOB_SECONDS}}

    async def one(client: httpx.AsyncClient, index: int, user: str) -> None:
        nonlocal refused
        await asyncio.sleep(max(0.0, start + index * pace - time.monotonic()))
        async with gate:
            response = await client.post(f"{url}/task", json={"user_id": user, **body})
        if response.status_code == 200:
            admitted.add(response.json()["job_id"])
        else:
            assert response.status_code == 429, response.text
            assert "job_id" not in response.json()
            refused += 1

    async with httpx.AsyncClient(timeout=30) as client:
        await asyncio.gather(*(one(client, i, user) for i, user in enumerate(users)))
    return admitted, refused


def kill_and_restart(worker: TaskhubProcess, sync_redis: redis.Redis, active_key: str) -> list[int]:
    """Kill the worker KILLS times during the load, restarting it each time."""
    in_flight = []
    for _ in range(KILLS):
        time.sleep(LOAD_SECONDS / (KILLS + 1))
        in_flight.append(sync_redis.llen(active_key))
        worker.kill()  # SIGKILL
        worker.start(wait_for="started (worker)")
    return in_flight


def whereabouts(
    sync_redis: redis.Redis, ns: Namespace, job_ids: set[str], *logs: TaskhubProcess
) -> str:
    """Where each of ``job_ids`` is in Redis (its record, every list or set holding it)
    and every log line naming it: what a lost job's report needs to say."""
    queue = f"saq:{ns.queue}"
    report = []
    for job_id in sorted(job_ids):
        key = f"saq:job:{ns.queue}:{job_id}"
        places = [
            f"queued@{sync_redis.lpos(f'{queue}:queued', key)}",
            f"active@{sync_redis.lpos(f'{queue}:active', key)}",
            f"incomplete={sync_redis.zscore(f'{queue}:incomplete', key)}",
            f"heartbeat={sync_redis.zscore(f'{queue}:heartbeats', key)}",
            f"dead={sync_redis.zscore(f'{queue}:dead', key)}",
        ]
        report.append(f"job {job_id}: {' '.join(places)}\n  record: {sync_redis.get(key)!r}")
        for process in logs:
            report += [f"  {process.args[0]}: {line}" for line in process.lines if job_id in line]
    return "\n".join(report)


def test_every_admitted_job_completes_while_workers_are_killed(
    tmp_path: Path, ns: Namespace, redis_url: str, sync_redis: redis.Redis, spawn
) -> None:
    config = config_dict(
        ns,
        redis_url,
        plugins_dir=delivery_plugins(tmp_path),
        tasks={"log_completion": {}, "sleepy": {}},
        limiter={"type": "token_bucket", "capacity": CAPACITY, "refill": 1, "period": 600},
        # Each crash costs the jobs it interrupts an attempt; 10 leave room for 5 kills.
        queue=crash_queue(ns),
    )
    server = spawn(config, "serve", cwd=tmp_path / "server")
    worker = spawn(config, "worker", cwd=tmp_path / "worker", wait_for="started (worker)")
    started = time.monotonic()

    async def load_while_killing() -> tuple[set[str], int, list[int]]:
        killing = asyncio.to_thread(kill_and_restart, worker, sync_redis, f"saq:{ns.queue}:active")
        (admitted, refused), in_flight = await asyncio.gather(submit_all(server.url), killing)
        return admitted, refused, in_flight

    admitted, refused, in_flight = asyncio.run(load_while_killing())
    load_done = time.monotonic()
    log = tmp_path / "worker" / "task.log"

    def completed() -> Counter[str]:
        return Counter(re.findall(r"job=(\w+) attempt=\d+", log.read_text()))

    wait_until(lambda: admitted <= set(completed()), 30, interval=0.2)
    drained = time.monotonic()
    lines = completed()
    duplicates = sum(1 for count in lines.values() if count > 1)
    lost = admitted - set(lines)
    print(
        f"\nledger: requests={len(admitted) + refused} accepted={len(admitted)} "
        f"refused(429)={refused} completed={len(set(lines) & admitted)} "
        f"duplicates={duplicates} lost={len(lost)} unexpected={len(set(lines) - admitted)} "
        f"kills={KILLS} in_flight_at_kill={in_flight} "
        f"load={load_done - started:.1f}s drain={drained - load_done:.1f}s"
    )
    assert len(admitted) + refused == NORMAL_USERS * NORMAL_REQUESTS + HEAVY_USERS * HEAVY_REQUESTS
    assert len(admitted) == NORMAL_USERS * NORMAL_REQUESTS + HEAVY_USERS * CAPACITY
    assert refused == HEAVY_USERS * (HEAVY_REQUESTS - CAPACITY)
    assert not lost, f"{len(lost)} admitted jobs never completed:\n" + whereabouts(
        sync_redis, ns, lost, server, worker
    )
    assert set(lines) == admitted  # and no refused request produced one
    assert sync_redis.zcard(f"saq:{ns.queue}:dead") == 0
    assert any(in_flight), "no kill found a job in flight: the test did not test anything"
    assert worker.stop() == 0
