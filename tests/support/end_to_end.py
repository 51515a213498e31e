"""The end-to-end path on a Redis reached some particular way (TLS, an ACL user): what
every such test checks before its own."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.support.processes import TaskhubProcess, run_cli, wait_until


def end_to_end(
    spawn: Callable[..., TaskhubProcess], directory: Path, config: dict[str, Any]
) -> TaskhubProcess:
    """``taskhub run`` on ``config`` in ``directory``: ready, a job admitted over HTTP, run
    by the worker and shown complete, and ``taskhub status`` reading the same Redis."""
    process = spawn(config, cwd=directory)
    ready = httpx.get(f"{process.url}/ready", timeout=10)
    assert ready.status_code == 200, (ready.text, process.output)
    response = httpx.post(f"{process.url}/task", json={"user_id": "alice"}, timeout=10)
    assert response.status_code == 200, (response.text, process.output)
    job_id = response.json()["job_id"]
    log = directory / "task.log"
    assert wait_until(lambda: log.exists() and job_id in log.read_text(), 15), process.output
    state = httpx.get(f"{process.url}/task/{job_id}", timeout=10).json()
    assert state["status"] == "complete", state
    status = run_cli(["status", str(directory / "config.yaml"), "--json"], directory)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout.splitlines()[0])["queued"] == 0
    return process
