"""Execution limits: a worker runs jobs no faster than its rules allow, idling in between."""

from __future__ import annotations

import os
import re
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from tests.support.configs import config_dict
from tests.support.namespaces import Namespace
from tests.support.processes import wait_until
from tests.support.redis_servers import PrivateRedis

# A process-level test of workers and Redis, and slow: it runs on the default server only,
# since what it sends over HTTP (POST /task) the HTTP tests check on every server.
pytestmark = pytest.mark.servers("sanic")

JOBS = 100


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.parametrize("fairness", ["none", "user"])
def test_a_backlog_runs_at_the_execution_rate_without_failing_or_spinning(
    tmp_path: Path, ns: Namespace, private_redis: PrivateRedis, spawn, fairness: str
) -> None:
    config = config_dict(ns, private_redis.url, limiter={"type": "token_bucket", "capacity": 1000})
    config["queue"]["fairness"] = fairness
    config["limits"] = {
        # 10 jobs per second per user, bursts of 10
        "execution": [
            {
                "key": "user",
                "type": "token_bucket",
                "capacity": 10,
                "refill": 10,
                "period": 1,
                "block": 0,
            }
        ]
    }
    server = spawn(config, "serve", cwd=tmp_path / "server")
    with httpx.Client(timeout=10) as http:
        for _ in range(JOBS):
            assert http.post(f"{server.url}/task", json={"user_id": "busy"}).status_code == 200
    redis = private_redis.client()
    redis.config_resetstat()
    worker = spawn(config, "worker", cwd=tmp_path, wait_for="started (worker)")
    assert worker.proc is not None
    cpu_before = cpu_seconds(worker.proc.pid)
    log = tmp_path / "task.log"
    wait_until(lambda: log.exists() and len(log.read_text().splitlines()) >= JOBS, 30)
    cpu = cpu_seconds(worker.proc.pid) - cpu_before
    lines = log.read_text().splitlines()
    assert len(lines) == JOBS
    assert all(line.endswith("attempt=1)") for line in lines), "a deferral used an attempt"
    stamps = [
        datetime.fromisoformat(re.search(r" at (\S+) \(", line).group(1).replace("Z", "+00:00"))
        for line in lines
    ]
    elapsed = (max(stamps) - min(stamps)).total_seconds()
    calls = redis.info("commandstats")["cmdstat_evalsha"]["calls"]
    print(
        f"\n[execution limits] {JOBS} jobs at 10/s (burst 10): {elapsed:.1f} s from first to "
        f"last, worker CPU {cpu:.2f} s, {calls} scripts run"
    )
    assert 8.0 <= elapsed <= 11.5  # 10 at once, then 90 at 10/s
    assert cpu < 3.0  # idle between jobs: no polling loop
    # per job: one limit check, one deferral at most, claim and finish; plus upkeep ticks;
    # with fairness, an idle worker woken by a job takes it in a script of its own
    assert calls < JOBS * (5 if fairness == "none" else 6) + 150
    assert redis.zcard(f"saq:{ns.queue}:dead") == 0
    redis.close()
