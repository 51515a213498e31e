"""Job lifecycle over HTTP, retries with backoff, RetryLater, dead letters: real processes."""

from __future__ import annotations

import itertools
import json
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from tests.support.configs import config_dict, write_config
from tests.support.http_requests import get_job
from tests.support.namespaces import Namespace
from tests.support.plugin_sources import DELIVERY_TASKS, delivery_plugins
from tests.support.processes import TaskhubProcess, run_cli, wait_until


def delivery_config(tmp_path: Path, ns: Namespace, redis_url: str, **queue: Any) -> dict:
    queue_section = {
        "type": "saq",
        "name": ns.queue,
        "shutdown_grace": 2,
        "heartbeat": 1,
        "sweep_interval": 1,
        **queue,
    }
    return config_dict(
        ns,
        redis_url,
        plugins_dir=delivery_plugins(tmp_path),
        tasks=DELIVERY_TASKS,
        queue=queue_section,
    )


def serve_only(tmp_path: Path, ns: Namespace, redis_url: str, spawn) -> tuple[dict, TaskhubProcess]:
    """A server with no worker yet, so jobs wait until the test starts one."""
    config = delivery_config(tmp_path, ns, redis_url)
    return config, spawn(config, "serve", cwd=tmp_path / "server")


def submit(url: str, task: str = "log_completion", payload: Any = None) -> str:
    body: dict[str, Any] = {"user_id": "u1", "task": task}
    if payload is not None:
        body["payload"] = payload
    response = httpx.post(f"{url}/task", json=body, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["job_id"]


def wait_for_status(url: str, job_id: str, status: str, timeout: float = 15) -> dict[str, Any]:
    job = wait_until(lambda: (get_job(url, job_id) or {}).get("status") == status, timeout)
    state = get_job(url, job_id)
    assert job, f"job {job_id} never became {status}: {state}"
    assert state is not None
    return state


def parse(stamp: str) -> datetime:
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", stamp), stamp
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def test_get_follows_a_job_from_queued_to_active_to_complete(
    tmp_path: Path, ns: Namespace, redis_url: str, spawn
) -> None:
    config, server = serve_only(tmp_path, ns, redis_url, spawn)
    job_id = submit(server.url, "sleepy", {"seconds": 1.5})

    queued = get_job(server.url, job_id)
    assert queued is not None
    assert queued["status"] == "queued" and queued["attempts"] == 0
    assert queued["task"] == "sleepy" and queued["user_id"] == "u1"
    assert queued["max_attempts"] == 3
    assert queued["started_at"] is None and queued["completed_at"] is None
    queued_at = parse(queued["queued_at"])

    spawn(config, "worker", cwd=tmp_path / "worker", wait_for="started (worker)")
    active = wait_for_status(server.url, job_id, "active")
    assert active["attempts"] == 1
    started_at = parse(active["started_at"])
    assert active["completed_at"] is None

    done = wait_for_status(server.url, job_id, "complete")
    assert done["attempts"] == 1 and done["result"] == "slept" and done["error"] is None
    completed_at = parse(done["completed_at"])
    assert queued_at <= started_at < completed_at
    assert (completed_at - started_at).total_seconds() >= 1.4


def test_delete_aborts_queued_and_running_jobs_and_409s_finished_ones(
    tmp_path: Path, ns: Namespace, redis_url: str, spawn
) -> None:
    config, server = serve_only(tmp_path, ns, redis_url, spawn)
    waiting = submit(server.url, "sleepy", {"seconds": 60})
    response = httpx.delete(f"{server.url}/task/{waiting}")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "aborted"
    assert get_job(server.url, waiting)["status"] == "aborted"  # type: ignore[index]

    running = submit(server.url, "sleepy", {"seconds": 60})
    worker = spawn(config, "worker", cwd=tmp_path / "worker", wait_for="started (worker)")
    wait_for_status(server.url, running, "active")
    response = httpx.delete(f"{server.url}/task/{running}")
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "aborting"
    aborted = wait_for_status(server.url, running, "aborted", timeout=5)
    assert aborted["error"] == "aborted by request" and aborted["completed_at"]

    again = httpx.delete(f"{server.url}/task/{running}")
    assert again.status_code == 409
    assert again.json()["error"] == "conflict" and again.json()["job"]["status"] == "aborted"

    finished = submit(server.url)
    wait_for_status(server.url, finished, "complete")
    assert httpx.delete(f"{server.url}/task/{finished}").status_code == 409
    assert "Traceback" not in worker.output
    assert not (tmp_path / "worker" / "task.log").read_text().count("sleepy")


def test_a_handler_that_ignores_the_abort_ends_aborted_once_never_retried(
    tmp_path: Path, ns: Namespace, redis_url: str, spawn
) -> None:
    """Issue 17: it used to time out, count as a failure and run again."""
    config = delivery_config(tmp_path, ns, redis_url)
    config["tasks"] = {**config["tasks"], "deaf": {"retries": 3, "retry_delay": 0.1, "timeout": 2}}
    server = spawn(config, "serve", cwd=tmp_path / "server")
    worker = spawn(config, "worker", cwd=tmp_path / "worker", wait_for="metrics on ")
    line = worker.wait_for("metrics on ")
    assert line is not None
    metrics_url = line.split("metrics on ")[1].split()[0]
    job_id = submit(server.url, "deaf")
    wait_for_status(server.url, job_id, "active")

    response = httpx.delete(f"{server.url}/task/{job_id}")
    assert response.status_code == 202, response.text
    aborted = wait_for_status(server.url, job_id, "aborted", timeout=10)  # timeout 2 s
    assert aborted["attempts"] == 1 and aborted["error"] == "aborted by request"
    assert aborted["result"] is None and aborted["retry_at"] is None
    time.sleep(1.5)  # a retry (0.1 s later) would have started by now
    assert get_job(server.url, job_id) == aborted
    attempts = (tmp_path / "worker" / f"attempts-{job_id}").read_text().splitlines()
    assert len(attempts) == 1
    assert httpx.delete(f"{server.url}/task/{job_id}").status_code == 409

    scraped = httpx.get(metrics_url, timeout=10).text
    counts = {
        outcome: sum(
            float(row.rsplit(" ", 1)[1])
            for row in scraped.splitlines()
            if row.startswith("taskhub_jobs_total{")
            and 'task="deaf"' in row
            and f'outcome="{outcome}"' in row
        )
        for outcome in ("aborted", "failed", "retried", "dead", "completed")
    }
    assert counts == {"aborted": 1, "failed": 0, "retried": 0, "dead": 0, "completed": 0}
    assert "ignored its abort until its 2 s timeout" in worker.output
    assert "Traceback" not in worker.output
    assert "deaf" not in (tmp_path / "worker" / "task.log").read_text()


def test_unknown_and_malformed_ids_are_404_json(
    tmp_path: Path, ns: Namespace, redis_url: str, spawn
) -> None:
    server = spawn(delivery_config(tmp_path, ns, redis_url), "serve")
    for job_id in ("0" * 32, "no-such-job", "x" * 300, "a%2Fb", "%00", "..%2F..%2Fetc"):
        for method in ("GET", "DELETE"):
            response = httpx.request(method, f"{server.url}/task/{job_id}")
            assert response.status_code == 404, (method, job_id, response.text)
            assert response.json()["error"] == "not_found"


def test_a_finished_job_is_kept_for_ttl_then_gone(
    tmp_path: Path, ns: Namespace, redis_url: str, spawn
) -> None:
    process = spawn(delivery_config(tmp_path, ns, redis_url, ttl=1))
    job_id = submit(process.url)
    wait_for_status(process.url, job_id, "complete")
    assert wait_until(lambda: get_job(process.url, job_id) is None, 3)


def test_failures_retry_with_growing_jittered_delays_then_succeed(
    tmp_path: Path, ns: Namespace, redis_url: str, spawn
) -> None:
    process = spawn(delivery_config(tmp_path, ns, redis_url))
    job_id = submit(process.url, "flaky")
    done = wait_for_status(process.url, job_id, "complete", timeout=20)
    assert done["attempts"] == 3 and done["result"] == 3
    assert "ConnectionError: upstream down (attempt 2)" in done["error"]  # the last failure

    starts = [float(t) for t in (tmp_path / f"attempts-{job_id}").read_text().split()]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    # nominal delays 0.4 then 0.8 s, each jittered into its upper half
    assert 0.2 <= gaps[0] < 0.7 and 0.4 <= gaps[1] < 1.2, gaps
    planned = [float(d) for d in re.findall(r"next attempt in ([\d.]+) s", process.output)]
    assert len(planned) == 2 and planned[0] <= planned[1], process.output
    assert f"job={job_id} attempt=3" in (tmp_path / "task.log").read_text()
    assert "Traceback" not in process.output  # failures that will be retried are one line


def test_retry_later_reschedules_uses_an_attempt_and_logs_at_info(
    tmp_path: Path, ns: Namespace, redis_url: str, spawn
) -> None:
    process = spawn(delivery_config(tmp_path, ns, redis_url))
    before = time.time()
    job_id = submit(process.url, "later", {"delay": 1.5})
    waiting = wait_for_status(process.url, job_id, "queued", timeout=5)
    wait_until(lambda: get_job(process.url, job_id)["attempts"] == 1, 5)  # type: ignore[index]
    waiting = get_job(process.url, job_id)
    assert waiting is not None and waiting["retry_at"] is not None
    done = wait_for_status(process.url, job_id, "complete", timeout=10)
    assert done["attempts"] == 2
    assert done["result"] - before >= 1.5
    line = next(line for line in process.output.splitlines() if "RetryLater" in line)
    assert " INFO " in line and "not ready yet" in line and "attempt 1/2" in line


def test_dead_letters_are_listed_retried_and_purged(
    tmp_path: Path, ns: Namespace, redis_url: str, spawn
) -> None:
    config = delivery_config(tmp_path, ns, redis_url)
    path = write_config(tmp_path, config)
    (tmp_path / "broken.flag").touch()
    process = spawn(config)
    job_ids = [submit(process.url, "broken") for _ in range(2)]
    for job_id in job_ids:
        failed = wait_for_status(process.url, job_id, "failed")
        assert failed["attempts"] == 2 and "ValueError: boom" in failed["error"]
        assert "Traceback (most recent call last)" in failed["error"]
    assert "failed after 2 attempts, kept as a dead letter: ValueError: boom" in process.output

    listing = run_cli(["jobs", "failed", str(path)], tmp_path)
    assert listing.returncode == 0, listing.stderr
    header, *rows, total = listing.stdout.splitlines()
    assert header.split() == ["ID", "TASK", "USER", "ATTEMPTS", "FAILED", "AT", "ERROR"]
    assert total == "2 dead letter(s)"
    for job_id in job_ids:
        row = next(row for row in rows if row.startswith(job_id))
        assert row.split()[1:4] == ["broken", "u1", "2/2"] and row.endswith("ValueError: boom")

    as_json = run_cli(["jobs", "failed", str(path), "--json"], tmp_path)
    letters = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert sorted(letter["job_id"] for letter in letters) == sorted(job_ids)

    shown = run_cli(["jobs", "show", str(path), job_ids[0]], tmp_path)
    assert shown.returncode == 0 and json.loads(shown.stdout)["status"] == "failed"

    bad = run_cli(["jobs", "retry", str(path), job_ids[0], "nonexistent"], tmp_path)
    assert bad.returncode == 2 and "not a dead letter: nonexistent" in bad.stderr
    assert "Traceback" not in bad.stderr
    assert run_cli(["jobs", "show", str(path), "nonexistent"], tmp_path).returncode == 2

    (tmp_path / "broken.flag").unlink()
    retried = run_cli(["jobs", "retry", str(path), job_ids[0]], tmp_path)
    assert retried.returncode == 0 and f"re-queued 1 job(s)\n  {job_ids[0]}" in retried.stdout
    done = wait_for_status(process.url, job_ids[0], "complete")
    assert done["attempts"] == 1 and done["result"] == "fixed"
    assert f"job={job_ids[0]} attempt=1" in (tmp_path / "task.log").read_text()

    listing = run_cli(["jobs", "failed", str(path), "--json"], tmp_path)
    assert [json.loads(line)["job_id"] for line in listing.stdout.splitlines()] == [job_ids[1]]
    purged = run_cli(["jobs", "purge", str(path)], tmp_path)
    assert purged.returncode == 0 and purged.stdout == "purged 1 dead letter(s)\n"
    assert run_cli(["jobs", "failed", str(path)], tmp_path).stdout == "no dead letters\n"
    assert get_job(process.url, job_ids[1]) is None
