"""The worker: crash recovery with the default job options, and sinks under concurrency."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import httpx
import redis
from helpers import Namespace, config_dict, wait_until

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


def test_a_killed_workers_job_runs_again_on_another_worker(
    tmp_path: Path, ns: Namespace, redis_url: str, sync_redis: redis.Redis, spawn
) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "hang_once.py").write_text(HANG_ONCE)
    config = config_dict(
        ns,
        redis_url,
        plugins_dir=str(plugins),
        tasks={"log_completion": {}, "hang_once": {"timeout": 3}},
        queue={"type": "saq", "name": ns.queue, "sweep_interval": 1},
    )
    server = spawn(config, "serve", cwd=tmp_path / "server")
    first = spawn(config, "worker", cwd=tmp_path / "first", wait_for="started (worker)")
    response = httpx.post(f"{server.url}/task", json={"user_id": "u", "task": "hang_once"})
    job_id = response.json()["job_id"]
    job_key = f"saq:job:{ns.queue}:{job_id}"

    def status() -> str:
        return json.loads(sync_redis.get(job_key))["status"]

    assert wait_until(lambda: status() == "active", 10)
    first.stop(signal.SIGKILL)  # no chance to hand the job back

    second = spawn(config, "worker", cwd=tmp_path / "second", wait_for="started (worker)")
    log = tmp_path / "second" / "task.log"
    # stuck after its 3 s timeout, found by the next sweep, retried (SAQ waits 5 s for an abort)
    assert wait_until(lambda: log.exists() and log.read_text(), 30), second.output
    assert f"(task=hang_once job={job_id} attempt=2)" in log.read_text()
    assert wait_until(lambda: status() == "complete", 5)
    assert (tmp_path / "first" / "task.log").read_text() == ""


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
