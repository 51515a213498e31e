"""``taskhub status``: counts, workers and failures against a real worker; --watch; errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from taskhub.jobs import QueueSnapshot, WorkerStatus
from taskhub.monitoring.snapshot import Rates
from tests.support.backends import config_on
from tests.support.configs import config_dict, write_config
from tests.support.http_requests import get_job
from tests.support.namespaces import Namespace
from tests.support.plugin_sources import delivery_plugins
from tests.support.processes import run_cli, wait_until

# A process-level test of workers and Redis, and slow: it runs on the default server only,
# since what it sends over HTTP (POST /task) the HTTP tests check on every server.
pytestmark = pytest.mark.servers("sanic")

TASKS = {"log_completion": {}, "sleepy": {}, "broken": {"retries": 1}}
QUEUED = 3


def submit(url: str, task: str, payload: dict | None = None) -> str:
    body = {"user_id": "u1", "task": task, "payload": payload}
    response = httpx.post(f"{url}/task", json=body, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["job_id"]


def reach(url: str, job_id: str, status: str) -> None:
    assert wait_until(lambda: (get_job(url, job_id) or {}).get("status") == status, 15), (
        f"job {job_id} never became {status}: {get_job(url, job_id)}"
    )


@pytest.mark.parametrize("on", ["single", "cluster"])
def test_status_shows_depth_workers_and_failures(
    tmp_path: Path, ns: Namespace, spawn, on: str, request: pytest.FixtureRequest
) -> None:
    """On the cluster the queue has three shards, which the snapshot sums."""
    shards = 3 if on == "cluster" else 1
    queue = {"type": "saq", "name": ns.queue, "concurrency": 1, "shutdown_grace": 0}
    config = config_on(on, ns, request)
    config.update(
        plugins_dir=delivery_plugins(tmp_path), tasks=TASKS, queue={**queue, "shards": shards}
    )
    path = write_config(tmp_path, config)
    process = spawn(config)
    (tmp_path / "broken.flag").touch()
    dead = submit(process.url, "broken")
    reach(process.url, dead, "failed")
    running = submit(process.url, "sleepy", {"seconds": 60})
    reach(process.url, running, "active")
    for _ in range(QUEUED):
        submit(process.url, "sleepy", {"seconds": 0})

    result = run_cli(["status", str(path), "--json"], tmp_path)
    assert result.returncode == 0, result.stderr
    snapshot = json.loads(result.stdout)
    counts = {key: snapshot[key] for key in ("queued", "active", "scheduled", "dead")}
    assert counts == {"queued": QUEUED, "active": 1, "scheduled": 0, "dead": 1}
    [worker] = snapshot["workers"]
    assert worker["running"] == 1 and worker["last_seen"] is not None
    assert worker["uptime"] is not None and worker["complete"] is not None
    [failure] = snapshot["recent_failures"]
    assert failure["job_id"] == dead and failure["error"] == "ValueError: boom"
    assert set(snapshot["rates"]) == {"completed_per_s", "failed_per_s", "retried_per_s", "basis"}

    table = run_cli(["status", str(path)], tmp_path)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].startswith(f"queue '{ns.queue}' at ")
    depth = lines.index("QUEUED  ACTIVE  SCHEDULED  DEAD")
    assert lines[depth + 1].split() == [str(QUEUED), "1", "0", "1"]
    row = next(line for line in lines if line.startswith(worker["worker_id"]))
    assert row.split()[1] == "1"  # running
    assert any(line.startswith("rates: ") for line in lines)
    assert "1 dead letter(s); newest:" in lines
    assert any(line.startswith(dead) and line.endswith("ValueError: boom") for line in lines)

    watch = subprocess.Popen(
        [sys.executable, "-m", "taskhub", "status", str(path), "--watch", "0.2"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    heads, err = 0, ""
    try:
        assert watch.stdout is not None
        for line in watch.stdout:  # blocks per line: the process writes a frame, then sleeps
            heads += line.startswith(f"queue '{ns.queue}' at ")
            if heads >= 3:
                break
        watch.send_signal(signal.SIGINT)
        err = watch.communicate(timeout=10)[1]
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()
    assert heads >= 3
    assert watch.returncode == 0, err
    assert "Traceback" not in err

    def reported() -> dict | None:  # the worker's next stats report (every 10 s) counts it
        look = json.loads(run_cli(["status", str(path), "--json"], tmp_path).stdout)
        return look if look["workers"][0]["failed"] == 1 else None

    look = wait_until(reported, timeout=15, interval=1)
    assert look, "the worker never reported its dead letter in its stats"
    worker = look["workers"][0]  # one slot, held by the sleeper: nothing has completed
    assert (worker["complete"], worker["retried"], worker["aborted"]) == (0, 0, 0)
    assert look["rates"]["failed_per_s"] > 0 and look["rates"]["completed_per_s"] == 0


def test_unreachable_redis_is_one_line_and_exit_1(tmp_path: Path, ns: Namespace) -> None:
    path = write_config(tmp_path, config_dict(ns, "redis://127.0.0.1:1"))
    result = run_cli(["status", str(path)], tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("taskhub: error: Redis is unreachable")


def test_an_embedded_redis_has_nothing_to_show(tmp_path: Path, ns: Namespace) -> None:
    path = write_config(tmp_path, config_dict(ns, "memory://"))
    result = run_cli(["status", str(path), "--json"], tmp_path)
    assert result.returncode == 2
    assert "memory://" in result.stderr and "Traceback" not in result.stderr


def snap(*workers: WorkerStatus) -> QueueSnapshot:
    return QueueSnapshot("q", datetime.now(UTC), 0, 0, 0, 0, workers=list(workers))


def test_rates_are_counter_deltas_over_worker_uptime() -> None:
    first = snap(WorkerStatus("a", 0, complete=100, failed=0, retried=0, uptime=100.0))
    later = snap(WorkerStatus("a", 0, complete=150, failed=2, retried=4, uptime=110.0))
    since_start = Rates.of(later)
    assert since_start.completed == 150 / 110 and "since each worker started" in since_start.basis
    between = Rates.of(later, first)
    assert (between.completed, between.failed, between.retried) == (5.0, 0.2, 0.4)
    assert "last 10 s" in between.basis
    no_report_since = Rates.of(first, first)  # falls back to the average since start
    assert no_report_since.completed == 1.0
    nobody = Rates.of(snap(WorkerStatus("b", 2)))
    assert nobody.completed is None and "no worker" in nobody.basis
