"""A live taskhub with the dashboard on, for the API test and the browser test alike."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from tests.support.configs import config_dict
from tests.support.namespaces import Namespace
from tests.support.plugin_sources import delivery_plugins

TOKEN = "test-dashboard-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CAPACITY = 3  # submissions per user before 429s (no refill within a test)


def dashboard_config(ns: Namespace, redis_url: str, directory: Path) -> dict[str, Any]:
    """The dashboard on; ``doomed`` fails (while broken.flag exists) with one attempt only."""
    return config_dict(
        ns,
        redis_url,
        plugins_dir=delivery_plugins(directory),
        limiter={"type": "token_bucket", "capacity": CAPACITY, "refill": 1, "period": 3600},
        tasks={"log_completion": {}, "doomed": {"type": "broken", "retries": 1}},
        dashboard={"enabled": True, "token": TOKEN},
    )


def submit(url: str, user: str, task: str = "log_completion") -> httpx.Response:
    return httpx.post(f"{url}/task", json={"user_id": user, "task": task}, timeout=10)


def summary(url: str) -> dict[str, Any]:
    response = httpx.get(f"{url}/dashboard/api/summary", headers=AUTH, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()
