"""The ``concurrency`` strategy: slots held from admission until the job finishes for good."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.support.configs import config_dict
from tests.support.namespaces import Namespace
from tests.support.plugin_sources import DELIVERY_TASKS, delivery_plugins
from tests.support.processes import wait_until

TASK_RETRIES = {**DELIVERY_TASKS, "broken": {"retries": 1}}


def post(url: str, user: str = "u1", task: str = "log_completion") -> httpx.Response:
    return httpx.post(f"{url}/task", json={"user_id": user, "task": task}, timeout=10)


@pytest.mark.parametrize("fairness", ["none", "user"])
def test_slots_free_when_jobs_finish_fail_for_good_or_are_aborted(
    tmp_path: Path, ns: Namespace, redis_url: str, spawn, sync_redis, fairness: str
) -> None:
    config = config_dict(
        ns,
        redis_url,
        plugins_dir=delivery_plugins(tmp_path),
        tasks=TASK_RETRIES,
        limiter={"type": "concurrency", "limit": 2, "retry_after": 2},
    )
    config["queue"].update(heartbeat=1, sweep_interval=1, fairness=fairness)
    server = spawn(config, "serve", cwd=tmp_path / "server")
    first, second, third = (post(server.url) for _ in range(3))
    assert [r.status_code for r in (first, second, third)] == [200, 200, 429]
    assert third.headers["Retry-After"] == "2" and third.json()["policy"] == "concurrency"
    assert post(server.url, "u2").status_code == 200  # slots are per user
    slots = f"{ns.prefix}:concurrency:cc:u1"
    assert sync_redis.zcard(slots) == 2

    # aborting a queued job frees its slot at once
    job_id = first.json()["job_id"]
    assert httpx.delete(f"{server.url}/task/{job_id}", timeout=10).status_code in (200, 202)
    assert sync_redis.zcard(slots) == 1
    assert post(server.url, task="broken").status_code == 200  # takes the freed slot
    assert post(server.url).status_code == 429

    # a worker completes one job and dead-letters the broken one: both slots free
    (tmp_path / "broken.flag").touch()
    spawn(config, "worker", cwd=tmp_path, wait_for="started (worker)")
    assert wait_until(lambda: sync_redis.zcard(slots) == 0, 15)
    assert sync_redis.zcard(f"saq:{ns.queue}:dead") == 1
    assert [post(server.url).status_code for _ in range(2)] == [200, 200]
