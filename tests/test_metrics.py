"""Prometheus metrics: after a known sequence of requests and jobs, the scraped values say
exactly that. Real processes on the real Redis, scraped over HTTP."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from taskhub.builtin.saq.redis_queue import HardenedRedisQueue
from taskhub.builtin.saq.worker import HubWorker
from taskhub.errors import ConfigError
from taskhub.hub.kernel import Hub
from taskhub.hub.runner import TaskRunner
from taskhub.monitoring.exporter import QueueDepth, render
from taskhub.monitoring.metrics import JobMetrics
from tests.support.configs import config_dict, write_config
from tests.support.jobs import store_queued
from tests.support.plugin_sources import delivery_plugins
from tests.support.processes import TaskhubProcess, free_port, wait_until

HEARTBEAT = 0.5  # the ``queue`` fixture's

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def post(url: str, body: bytes, content_type: str = "application/json") -> int:
    response = httpx.post(
        f"{url}/task", content=body, headers={"Content-Type": content_type}, timeout=10
    )
    return response.status_code


def test_server_counts_requests_decisions_and_jobs(spawn, ns, redis_url, tmp_path: Path) -> None:
    taskhub = spawn(config_dict(ns, redis_url), "run")
    url = taskhub.url
    statuses = [post(url, b'{"user_id": "metrics-user"}') for _ in range(22)]
    assert statuses == [200] * 20 + [429] * 2
    assert post(url, b"{not json") == 400
    assert post(url, b'{"userid": "x"}') == 422
    assert post(url, b"user_id=x", "text/plain") == 415
    assert post(url, b'{"user_id": "' + b"x" * 70_000 + b'"}') == 413
    # valid JSON the queue cannot store (an int over 64 bits): a 422 counted like the others
    assert post(url, b'{"user_id": "big", "payload": {"n": 18446744073709551616}}') == 422

    def completed() -> Samples | None:
        samples = scrape(f"{url}/metrics")
        done = value(samples, "taskhub_jobs_total", task="log_completion", outcome="completed")
        return samples if done == 20 else None

    samples = wait_until(completed, timeout=15)
    assert samples, "the worker did not count 20 completed jobs"
    requests = {
        outcome: value(samples, "taskhub_requests_total", outcome=outcome)
        for outcome in ("admitted", "refused", "bad_request", "duplicate", "unavailable", "error")
    }
    assert requests == {
        "admitted": 20,
        "refused": 2,
        "bad_request": 5,
        "duplicate": 0,
        "unavailable": 0,
        "error": 0,
    }
    codes = {"invalid_json": 1, "invalid_request": 2, "unsupported_media_type": 1}
    codes["payload_too_large"] = 1
    for code, count in codes.items():
        assert value(samples, "taskhub_bad_requests_total", code=code) == count, code
    assert value(samples, "taskhub_refusals_total", rule="token_bucket") == 2
    name = "taskhub_limiter_decisions_total"
    decisions = {
        result: value(samples, name, rule="token_bucket", result=result)
        for result in ("allowed", "near_limit", "refused", "shadow_refused")
    }
    # capacity 20: the last 5 admissions leave it at least 80% used.
    assert decisions == {"allowed": 15, "near_limit": 5, "refused": 2, "shadow_refused": 0}
    assert value(samples, "taskhub_admission_seconds_count") == 22
    assert value(samples, "taskhub_job_seconds_count", task="log_completion") == 20
    assert value(samples, "taskhub_jobs_total", task="log_completion", outcome="failed") == 0
    for state in ("queued", "active", "incomplete", "dead"):
        assert ("taskhub_queue_jobs", frozenset({("state", state)})) in samples, state


def test_shadow_refusals_and_idempotent_replays(spawn, ns, redis_url) -> None:
    limiter = {"type": "token_bucket", "capacity": 2, "refill": 2, "period": 60}
    config = config_dict(ns, redis_url, limiter=limiter, limits={"shadow": True})
    url = spawn(config, "serve").url
    assert [post(url, b'{"user_id": "s"}') for _ in range(3)] == [200] * 3  # the 3rd: shadow
    for _ in range(2):
        response = httpx.post(
            f"{url}/task", json={"user_id": "i"}, headers={"Idempotency-Key": "k1"}, timeout=10
        )
        assert response.status_code == 200
    samples = scrape(f"{url}/metrics")
    requests = {
        o: value(samples, "taskhub_requests_total", outcome=o)
        for o in ("admitted", "duplicate", "refused")
    }
    assert requests == {"admitted": 4, "duplicate": 1, "refused": 0}
    name = "taskhub_limiter_decisions_total"
    # user s: 1 left (allowed), 0 left (near_limit), then over (shadow_refused).
    assert value(samples, name, rule="token_bucket", result="shadow_refused") == 1
    assert value(samples, name, rule="token_bucket", result="refused") == 0
    assert value(samples, "taskhub_refusals_total", rule="token_bucket") == 0


def test_worker_alone_serves_job_outcomes_on_its_port(spawn, ns, redis_url, tmp_path) -> None:
    plugins = delivery_plugins(tmp_path)
    fast = {"retry_delay": 0.05, "retry_backoff": 0}
    config = config_dict(
        ns,
        redis_url,
        plugins_dir=plugins,
        tasks={"flaky": fast, "broken": {**fast, "retries": 2}},
        default_task="flaky",
    )
    worker_dir = tmp_path / "worker"
    worker_dir.mkdir()
    (worker_dir / "broken.flag").write_text("")
    worker = spawn(config, "worker", cwd=worker_dir, wait_for="metrics on ")
    line = worker.wait_for("metrics on ")
    assert line is not None
    match = re.search(r"metrics on (http://\S+)", line)
    assert match, line
    server = spawn(config, "serve", cwd=tmp_path / "server")
    for body in (b'{"user_id": "a", "task": "flaky"}', b'{"user_id": "b", "task": "broken"}'):
        assert post(server.url, body) == 200

    def jobs(task: str, outcome: str) -> float:
        return value(scrape(match.group(1)), "taskhub_jobs_total", task=task, outcome=outcome)

    assert wait_until(lambda: jobs("flaky", "completed") == 1, timeout=15)
    assert wait_until(lambda: jobs("broken", "dead") == 1, timeout=15)
    samples = scrape(match.group(1))
    outcomes = ("completed", "failed", "retried", "dead")
    flaky = {o: value(samples, "taskhub_jobs_total", task="flaky", outcome=o) for o in outcomes}
    broken = {o: value(samples, "taskhub_jobs_total", task="broken", outcome=o) for o in outcomes}
    assert flaky == {"completed": 1, "failed": 2, "retried": 2, "dead": 0}
    assert broken == {"completed": 0, "failed": 2, "retried": 1, "dead": 1}
    assert value(samples, "taskhub_job_seconds_count", task="flaky") == 3
    assert value(samples, "taskhub_job_seconds_count", task="broken") == 2
    # The worker's port has no request metrics with values: it admits nothing.
    assert value(samples, "taskhub_requests_total", outcome="admitted") == 0


def test_multiprocess_mode_merges_the_processes_files(
    ns, redis_url, tmp_path: Path, server_type: str
) -> None:
    """With PROMETHEUS_MULTIPROC_DIR the values go through files there, and a scrape reads
    them back: what a future ``serve --workers N`` needs."""
    directory = tmp_path / "prometheus"
    directory.mkdir()
    config = write_config(tmp_path, config_dict(ns, redis_url, server_type))
    server = TaskhubProcess(
        ["serve", str(config)], cwd=tmp_path, env={"PROMETHEUS_MULTIPROC_DIR": str(directory)}
    )
    try:
        server.start()
        assert [post(server.url, b'{"user_id": "mp"}') for _ in range(3)] == [200] * 3
        samples = scrape(f"{server.url}/metrics")
    finally:
        server.kill()
    assert value(samples, "taskhub_requests_total", outcome="admitted") == 3
    assert value(samples, "taskhub_admission_seconds_count") == 3
    assert any(directory.glob("*.db"))


def test_metrics_port_on_the_command_line(ns, redis_url, tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, config_dict(ns, redis_url))
    worker = TaskhubProcess(["worker", str(config), "--metrics-port", str(port)], cwd=tmp_path)
    try:
        worker.start(f"metrics on http://127.0.0.1:{port}/metrics")
        samples = scrape(f"http://127.0.0.1:{port}/metrics")
        assert worker.stop() == 0  # the metrics thread does not hold up a clean exit
    finally:
        worker.kill()
    assert ("taskhub_admission_seconds_count", frozenset()) in samples


def test_metrics_disabled_means_no_endpoint(spawn, ns, redis_url) -> None:
    taskhub = spawn(config_dict(ns, redis_url, metrics={"enabled": False}), "serve")
    assert httpx.get(f"{taskhub.url}/metrics", timeout=10).status_code == 404


class _SlowQueue:
    async def depth(self) -> dict[str, int]:
        await asyncio.sleep(10)
        return {"queued": 1}


class _DownQueue:
    async def depth(self) -> dict[str, int]:
        raise ConnectionError("Redis is down")


async def test_a_queue_that_does_not_answer_is_left_out_of_the_scrape() -> None:
    for queue in (_SlowQueue(), _DownQueue()):
        started = time.monotonic()
        body = await render(QueueDepth(queue, timeout=0.1))  # type: ignore[arg-type]
        assert time.monotonic() - started < 2
        assert b"taskhub_queue_jobs" not in body
        assert b"taskhub_admission_seconds" in body


def config_error(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        Hub.from_file(path, env={})
    return str(caught.value)


def test_a_bad_metrics_option_is_a_config_error(tmp_path: Path) -> None:
    assert config_error(tmp_path, "metrics:\n  worker_port: 70000\n").endswith(
        "line 2: metrics.worker_port: input should be less than or equal to 65535 (got 70000)"
    )
    assert "unknown option 'enable'" in config_error(tmp_path, "metrics:\n  enable: true\n")


async def test_the_sweep_counts_what_it_recovers(queue: HardenedRedisQueue) -> None:
    """A dead worker's job: ``swept`` when queued again, ``swept`` and ``dead`` when it
    was the last attempt."""
    task = f"sweep-{queue.name}"  # a label of this test's own: the registry is per process
    metrics = JobMetrics([task])
    HubWorker(
        queue, beat_interval=1, runner=TaskRunner([]), specs={}, metrics=metrics, functions=[]
    )

    def count(outcome: str) -> float | None:
        return REGISTRY.get_sample_value("taskhub_jobs_total", {"task": task, "outcome": outcome})

    for retries in (2, 1):
        await store_queued(
            queue, function=task, kwargs={"user_id": "u"}, heartbeat=HEARTBEAT, retries=retries
        )
        job, raw = await queue.take(1)  # type: ignore[misc]
        assert await queue.claim(job, raw, "worker-1")
        await queue.redis.delete(queue._sweep)
        await queue.sweep(lock=60)  # first sight of the job
        await asyncio.sleep(HEARTBEAT + 0.2)  # its worker died: no beats
        await queue.redis.delete(queue._sweep)
        assert len(await queue.sweep(lock=60)) == 1
        if retries == 2:  # queued again first in line: take it out of the way
            await queue.redis.delete(queue._queued)
    assert (count("swept"), count("dead")) == (2, 1)
