"""taskhub mounted under ``/jobs`` of a Starlette and of a FastAPI application (the
docs' example, examples/fastapi_mount.py), served by uvicorn and hypercorn.

A mounted application gets no lifespan: taskhub starts on the first request under
``/jobs`` (once, however many arrive together) and stops with the server at SIGTERM:
the job that finished is in task.log, the one still running goes back to the queue.
"""

from __future__ import annotations

import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import redis

from tests.support.asgi_servers import start_asgi
from tests.support.configs import ROOT, config_dict, write_config
from tests.support.namespaces import Namespace
from tests.support.plugin_sources import DELIVERY_TASKS, delivery_plugins
from tests.support.processes import wait_until

STARTED = "taskhub 0.1.0 started"
HOSTS = {
    "starlette": "tests.support.mounted_app:app",
    "fastapi": "examples.fastapi_mount:app",
}


def job_status(url: str, job: str) -> str:
    return httpx.get(f"{url}/jobs/task/{job}", timeout=10).json()["status"]


@pytest.mark.parametrize(
    ("host", "server"), [("starlette", "uvicorn"), ("fastapi", "uvicorn"), ("fastapi", "hypercorn")]
)
def test_mounted_it_starts_on_first_use_and_stops_with_the_server(
    host: str, server: str, ns: Namespace, redis_url: str, sync_redis: redis.Redis, tmp_path: Path
) -> None:
    config = config_dict(
        ns, redis_url, plugins_dir=delivery_plugins(tmp_path), tasks=DELIVERY_TASKS
    )
    process = start_asgi(
        server,
        write_config(tmp_path, config),
        tmp_path,
        app=HOSTS[host],
        ready_path="/",  # the host's own route: taskhub stays unstarted
        env={"PYTHONPATH": str(ROOT)},  # where the host applications' modules are
    )
    url = process.url
    try:
        assert STARTED not in process.output  # the host serves; taskhub waits for a request

        with ThreadPoolExecutor(8) as pool:  # eight first requests at once: one start
            answers = list(
                pool.map(lambda _: httpx.get(f"{url}/jobs/health", timeout=20), range(8))
            )
        assert [a.status_code for a in answers] == [200] * 8
        assert process.output.count(STARTED) == 1

        page = httpx.get(f"{url}/jobs/docs", timeout=10)  # the API under the prefix
        assert page.status_code == 200
        for link in ("docs/swagger-ui.css", "docs/swagger-ui-bundle.js", "openapi.json"):
            assert httpx.get(str(page.url.join(link)), timeout=10).status_code == 200, link
        missing = httpx.get(f"{url}/jobs/nope", timeout=10)
        assert missing.json()["message"] == "Requested URL /nope not found"

        done = httpx.post(f"{url}/jobs/task", json={"user_id": "u"}, timeout=10).json()["job_id"]
        assert wait_until(lambda: job_status(url, done) == "complete", 15)
        slow = httpx.post(
            f"{url}/jobs/task",
            json={"user_id": "u", "task": "sleepy", "payload": {"seconds": 60}},
            timeout=10,
        ).json()["job_id"]
        assert wait_until(lambda: job_status(url, slow) == "active", 15)

        # uvicorn ends by raising SIGTERM again once it has shut down
        assert process.stop(signal.SIGTERM) in (0, -signal.SIGTERM), process.output
    finally:
        process.kill()
    output = process.output
    assert f"job {slow} (task sleepy) handed back to the queue" in output, output
    assert "taskhub stopped" in output
    assert "Traceback" not in output and "Task was destroyed" not in output, output
    assert done in (tmp_path / "task.log").read_text()
    assert sync_redis.lrange(f"saq:{ns.queue}:queued", 0, -1) == [
        f"saq:job:{ns.queue}:{slow}".encode()
    ]
    if server == "uvicorn":  # taskhub stopped first, then uvicorn (its signal, passed on)
        stopping = output.index("SIGTERM received: stopping taskhub, then the server")
        assert stopping < output.index("taskhub stopped") < output.index("Shutting down")
    else:  # hypercorn's loop ended first, and cancelled the close, which went on
        assert "the event loop is ending: stopping taskhub" in output
