"""The worker: crash recovery with the default job options, and sinks under concurrency."""

from __future__ import annotations

import json
import re
import signal
import time
from pathlib import Path

import httpx
import redis

from tests.support.configs import config_dict
from tests.support.http_requests import get_job
from tests.support.namespaces import Namespace
from tests.support.plugin_sources import delivery_plugins
from tests.support.processes import wait_until

# A handler that hangs on its first attempt, so the test can kill the worker mid-job.
HANG_ONCE = """
import asyncio
from taskhub import Task, TaskHandler, hookimpl

class HangOnce(TaskHandler):
    name = "hang_once"

    async def run(self, task: Task) -> str:
        if task.attempt == 1:
            await asyncio.sleep(3600)
        return "done"

@hookimpl
def register_handlers(register):
    register(HangOnce)
"""


# The recovery bound with these settings (docs/delivery.md): heartbeat +
# sweep_interval, plus the dequeue and a little scheduling slack.
HEARTBEAT, SWEEP_INTERVAL = 1, 1
RECOVERY_BOUND = HEARTBEAT + SWEEP_INTERVAL + 1.0


def test_a_killed_workers_job_runs_again_on_another_worker_within_the_bound(
    tmp_path: Path, ns: Namespace, redis_url: str, sync_redis: redis.Redis, spawn
) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "hang_once.py").write_text(HANG_ONCE)
    queue = {"type": "saq", "name": ns.queue, "heartbeat": HEARTBEAT}
    config = config_dict(
        ns,
        redis_url,
        plugins_dir=str(plugins),
        tasks={"log_completion": {}, "hang_once": {"timeout": 600}},
        queue={**queue, "sweep_interval": SWEEP_INTERVAL},
    )
    server = spawn(config, "serve", cwd=tmp_path / "server")
    first = spawn(config, "worker", cwd=tmp_path / "first", wait_for="started (worker)")
    response = httpx.post(f"{server.url}/task", json={"user_id": "u", "task": "hang_once"})
    job_id = response.json()["job_id"]
    job_key = f"saq:job:{ns.queue}:{job_id}"

    def status() -> str:
        return json.loads(sync_redis.get(job_key))["status"]

    assert wait_until(lambda: status() == "active", 10)
    second = spawn(config, "worker", cwd=tmp_path / "second", wait_for="started (worker)")
    log = tmp_path / "second" / "task.log"
    killed = time.monotonic()
    first.stop(signal.SIGKILL)  # no chance to hand the job back

    # the timeout (600 s) plays no part: the missing heartbeats give the job away
    assert wait_until(log.read_text, RECOVERY_BOUND + 2, interval=0.01), second.output
    recovered = time.monotonic() - killed
    print(f"recovered {recovered:.2f} s after SIGKILL (bound {RECOVERY_BOUND} s)")
    assert recovered <= RECOVERY_BOUND
    assert f"(task=hang_once job={job_id} attempt=2)" in log.read_text()
    assert wait_until(lambda: status() == "complete", 5)
    assert (tmp_path / "first" / "task.log").read_text() == ""
    assert "worker lost: no heartbeat for 1 s" in second.output


def test_a_worker_started_before_redis_waits_quietly_then_works(
    tmp_path: Path, ns: Namespace, private_redis, spawn
) -> None:
    private_redis.stop()
    config = config_dict(ns, private_redis.url)
    worker = spawn(config, "worker", cwd=tmp_path / "worker", wait_for="started (worker)")
    assert worker.wait_for("is unreachable", 10)
    time.sleep(2)  # several dequeue and upkeep rounds while Redis is away
    private_redis.start()
    server = spawn(config, "serve", cwd=tmp_path / "server")
    response = httpx.post(f"{server.url}/task", json={"user_id": "late"})
    assert response.status_code == 200
    log = tmp_path / "worker" / "task.log"
    assert wait_until(lambda: "user late " in log.read_text(), 15), worker.output
    assert worker.output.count("is unreachable") == 1
    assert "Traceback" not in worker.output
    assert worker.stop() == 0


def test_sigterm_finishes_jobs_within_the_grace_and_hands_back_the_rest(
    tmp_path: Path, ns: Namespace, redis_url: str, sync_redis: redis.Redis, spawn
) -> None:
    queue = {"type": "saq", "name": ns.queue, "concurrency": 4, "shutdown_grace": 2}
    config = config_dict(
        ns,
        redis_url,
        plugins_dir=delivery_plugins(tmp_path),
        tasks={"log_completion": {}, "sleepy": {}},
        queue={**queue, "heartbeat": HEARTBEAT, "sweep_interval": SWEEP_INTERVAL},
    )
    server = spawn(config, "serve", cwd=tmp_path / "server")
    first = spawn(config, "worker", cwd=tmp_path / "first", wait_for="started (worker)")

    def submit(seconds: float) -> str:
        body = {"user_id": "u", "task": "sleepy", "payload": {"seconds": seconds}}
        return httpx.post(f"{server.url}/task", json=body).json()["job_id"]

    short = [submit(1) for _ in range(2)]  # finish inside the grace period
    long = [submit(3600) for _ in range(2)]  # cannot: handed back
    assert wait_until(
        lambda: all((get_job(server.url, j) or {}).get("status") == "active" for j in short + long)
    )
    (tmp_path / "second").mkdir()
    (tmp_path / "second" / "fast.flag").touch()
    second = spawn(config, "worker", cwd=tmp_path / "second", wait_for="started (worker)")

    stopping = time.monotonic()
    assert first.stop(signal.SIGTERM) == 0, first.output
    stopped = time.monotonic() - stopping
    assert stopped < 2 + 2, first.output  # the grace, then a prompt hand-back
    assert "2 job(s) still running after the 2 s grace period: handing them back" in first.output
    assert "Traceback" not in first.output

    first_log = (tmp_path / "first" / "task.log").read_text()
    assert sorted(re.findall(r"job=(\w+) attempt=1", first_log)) == sorted(short)
    second_log = tmp_path / "second" / "task.log"
    assert wait_until(lambda: second_log.read_text().count("attempt=1") == 2, 3), second.output
    print(f"handed-back jobs done {time.monotonic() - stopping - stopped:.2f} s after exit")
    assert sorted(re.findall(r"job=(\w+) attempt=1", second_log.read_text())) == sorted(long)
    for job_id in short + long:
        job = get_job(server.url, job_id)
        assert job is not None and job["status"] == "complete" and job["attempts"] == 1, job
    assert sync_redis.zcard(f"saq:{ns.queue}:dead") == 0
