"""``/dashboard`` over HTTP on real processes and the real Redis: off by default, the token,
numbers summed over several servers, and retrying a dead letter (the browser test drives
the page itself)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from pydantic import TypeAdapter

from taskhub.components import QueueBackend
from taskhub.jobs import QueueSnapshot
from taskhub.monitoring.dashboard import Dashboard, Summary
from taskhub.monitoring.traffic import TrafficRecorder
from tests.support.backends import config_on
from tests.support.configs import config_dict, write_config
from tests.support.dashboard import AUTH, CAPACITY, TOKEN, dashboard_config, submit, summary
from tests.support.http_requests import get_job
from tests.support.processes import run_cli, wait_until

ROUTES = (
    ("GET", "/dashboard"),
    ("GET", "/dashboard/api/summary"),
    ("POST", "/dashboard/api/failed/some-job/retry"),
)


def test_off_by_default_the_routes_do_not_exist(ns, redis_url, spawn, sync_redis) -> None:
    server = spawn(config_dict(ns, redis_url), "serve")
    for method, path in ROUTES:
        response = httpx.request(method, f"{server.url}{path}", headers=AUTH)
        assert response.status_code == 404, path
    assert submit(server.url, "alice").status_code == 200
    server.stop()  # a recorder would flush as it stops
    assert not list(sync_redis.scan_iter(match=f"{ns.prefix}:traffic:*"))  # nothing counted


def test_enabled_without_a_long_token_is_a_config_error(ns, redis_url, tmp_path: Path) -> None:
    config = config_dict(ns, redis_url, dashboard={"enabled": True, "token": "short-secret"})
    result = run_cli(["check", str(write_config(tmp_path, config))], tmp_path)
    assert result.returncode == 2
    assert (
        "dashboard: value error, dashboard.enabled needs dashboard.token of at least "
        "16 characters; read it from the environment: token: ${TASKHUB_DASHBOARD_TOKEN}"
    ) in result.stderr
    assert "short-secret" not in result.stderr


def test_the_page_holds_no_data_and_the_data_needs_the_token(
    ns, redis_url, spawn, tmp_path: Path
) -> None:
    server = spawn(dashboard_config(ns, redis_url, tmp_path), "serve")
    page = httpx.get(f"{server.url}/dashboard")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src 'sha256-" in policy
    assert "connect-src 'self'" in policy and "unsafe-inline" not in policy
    assert TOKEN not in page.text and ns.queue not in page.text
    wrong = ("Bearer", f"Basic {TOKEN}", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", TOKEN)
    for headers in [{}] + [{"Authorization": value} for value in wrong]:
        for method, path in ROUTES[1:]:
            denied = httpx.request(method, f"{server.url}{path}", headers=headers)
            assert denied.status_code == 401, (headers, path)
            assert denied.json()["error"] == "unauthorized"
            assert denied.headers["WWW-Authenticate"].startswith("Bearer")
    assert summary(server.url)["queue"]["queue"] == ns.queue
    lower = httpx.get(
        f"{server.url}/dashboard/api/summary", headers={"Authorization": f"bearer {TOKEN}"}
    )
    assert lower.status_code == 200 and lower.headers["Cache-Control"] == "no-store"
    assert TOKEN not in server.output


@pytest.mark.parametrize("on", ["single", "cluster"])
def test_traffic_and_depth_are_summed_over_every_server(
    ns, spawn, tmp_path: Path, on: str, request: pytest.FixtureRequest
) -> None:
    """On the cluster the queue has three shards: the depth is summed over them too."""
    redis = config_on(on, ns, request)["redis"]
    config = {**dashboard_config(ns, redis["url"], tmp_path), "redis": redis}
    config["queue"]["shards"] = 3 if on == "cluster" else 1
    one = spawn(config, "serve", cwd=tmp_path / "one")
    two = spawn(config, "serve", cwd=tmp_path / "two")
    for url in (one.url, two.url):
        for _ in range(CAPACITY):
            assert submit(url, f"user-{url[-5:]}").status_code == 200
    for _ in range(4):  # shared limits: the flood user's 3 admitted, then refused on both
        for url in (one.url, two.url):
            submit(url, "flood")

    def counted() -> dict | None:
        traffic = summary(two.url)["traffic"]
        series = traffic["series"]
        done = sum(series["admitted"]) == 3 * CAPACITY and sum(series["refused"]) == 5
        return traffic if done else None

    traffic = wait_until(counted, timeout=15, interval=0.25)
    assert traffic, summary(two.url)
    assert traffic["top_refused"][0] == {"rule": "token_bucket", "key": "flood", "refusals": 5}
    queue = summary(one.url)["queue"]  # no worker: every admitted job still waits
    assert queue["queued"] == 3 * CAPACITY and queue["workers"] == []


def test_a_dead_letter_retried_from_the_dashboard_runs_again(
    ns, redis_url, spawn, tmp_path: Path
) -> None:
    (tmp_path / "broken.flag").touch()
    server = spawn(dashboard_config(ns, redis_url, tmp_path), "run")
    job_id = submit(server.url, "alice", "doomed").json()["job_id"]

    def failures() -> list:
        return summary(server.url)["queue"]["recent_failures"]

    assert wait_until(failures, timeout=15, interval=0.25)
    TypeAdapter(Summary).validate_python(summary(server.url))  # what /openapi.json documents
    (failed,) = failures()
    assert (failed["job_id"], failed["task"], failed["user_id"]) == (job_id, "doomed", "alice")
    assert failed["error"] == "ValueError: boom"
    (tmp_path / "broken.flag").unlink()

    retry = f"{server.url}/dashboard/api/failed/{job_id}/retry"
    response = httpx.post(retry, headers=AUTH)
    assert response.status_code == 200
    assert response.json() == {"status": "queued", "job_id": job_id}
    assert failures() == []  # the cached summary was dropped
    job = wait_until(lambda: (get_job(server.url, job_id) or {}).get("status") == "complete", 15)
    assert job, get_job(server.url, job_id)
    again = httpx.post(retry, headers=AUTH)
    assert again.status_code == 404 and again.json()["error"] == "not_found"
    too_long = httpx.post(f"{server.url}/dashboard/api/failed/{'x' * 300}/retry", headers=AUTH)
    assert too_long.status_code == 400 and "at most 256" in too_long.json()["message"]
    assert too_long.headers["Cache-Control"] == "no-store"


class CountingQueue(QueueBackend):
    """Answers snapshots slowly, counting them."""

    name = "counting"

    def __init__(self) -> None:
        self.snapshots = 0

    async def snapshot(self, failures: int = 5) -> QueueSnapshot:
        self.snapshots += 1
        await asyncio.sleep(0.05)  # long enough for every viewer below to arrive meanwhile
        return QueueSnapshot("q", datetime.now(UTC), 0, 0, 0, 0)


async def test_one_read_serves_every_viewer_for_a_second(client, ns) -> None:
    clock = [0.0]
    queue = CountingQueue()
    traffic = TrafficRecorder(client, ns.prefix, [])
    dashboard = Dashboard(traffic, queue, clock=lambda: clock[0])
    first = await asyncio.gather(*(dashboard.summary() for _ in range(20)))
    assert queue.snapshots == 1 and all(s is first[0] for s in first)
    clock[0] = 0.9
    assert await dashboard.summary() is first[0] and queue.snapshots == 1
    clock[0] = 1.0
    assert await dashboard.summary() is not first[0] and queue.snapshots == 2
