"""``GET /health`` (liveness) and ``GET /ready`` (readiness) on a live server."""

from __future__ import annotations

import time

import httpx

from tests.support.configs import config_dict
from tests.support.namespaces import Namespace
from tests.support.processes import wait_until
from tests.support.redis_servers import PrivateRedis


def get(url: str) -> httpx.Response:
    return httpx.get(url, timeout=10)


def test_ready_follows_redis_down_and_up_while_health_stays_ok(
    ns: Namespace, private_redis: PrivateRedis, spawn
) -> None:
    process = spawn(config_dict(ns, private_redis.url), command="serve")
    try:
        ready = get(f"{process.url}/ready")
        assert ready.status_code == 200
        assert ready.json() == {"status": "ready", "checks": {"redis": "ok", "queue": "ok"}}
        private_redis.stop()
        started = time.monotonic()
        down = get(f"{process.url}/ready")
        assert time.monotonic() - started < 5
        assert down.status_code == 503
        assert down.headers["Retry-After"] == "1"
        body = down.json()
        assert body["status"] == "not_ready"
        assert body["checks"] == {"redis": "unavailable", "queue": "unavailable"}
        assert "redis: unavailable" in body["reason"]
        health = get(f"{process.url}/health")
        assert (health.status_code, health.json()) == (200, {"status": "ok"})
        private_redis.start()
        assert wait_until(lambda: get(f"{process.url}/ready").status_code == 200, 15)
    finally:
        process.stop()


def test_embedded_mode_is_always_ready(ns: Namespace, spawn) -> None:
    process = spawn(config_dict(ns, "memory://"))
    try:
        response = get(f"{process.url}/ready")
        assert response.status_code == 200
        assert response.json()["status"] == "ready"
    finally:
        process.stop()
