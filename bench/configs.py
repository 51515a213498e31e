"""The YAML configs the harness gives ``taskhub serve | worker | run``."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from bench.procs import BenchError

KEY_PREFIX = "bench"
QUEUE = "bench"
# One worker process runs this many jobs at once (the drain row's load; the end-to-end
# row uses the same so both rows measure one worker configuration).
CONCURRENCY = 50


def config(
    redis_url: str,
    port: int,
    task_log: Path,
    *,
    capacity: int = 20,
    queue: dict[str, Any] | None = None,
    cluster: bool = False,
    log_level: str = "WARNING",
    server: str = "sanic",
    tracing: bool = False,
) -> dict[str, Any]:
    """Only the file_log sink (no console), WARNING logs, the default limiter (a token
    bucket of 20 per 60 s per user) unless ``capacity`` says otherwise; ``cluster``
    when ``redis_url`` is a node of a Redis Cluster; the server plugin ``server``."""
    redis: dict[str, Any] = {"url": redis_url, "key_prefix": KEY_PREFIX}
    if cluster:
        redis["cluster"] = True
    settings: dict[str, Any] = {
        "redis": redis,
        "plugins_dir": None,
        "server": {"type": server, "host": "127.0.0.1", "port": port},
        "limiter": {"type": "token_bucket", "capacity": capacity, "refill": capacity},
        "queue": {"type": "saq", "name": QUEUE, "concurrency": CONCURRENCY, **(queue or {})},
        "sinks": [{"type": "file_log", "path": str(task_log)}],
        "metrics": {"worker_port": 0},  # on (the default), on a port nothing else holds
        "logging": {"level": log_level},
    }
    if tracing:  # where spans go is the OTEL_* environment's to say (bench/otlp.py)
        settings["tracing"] = {"enabled": True}
    return settings


def write(path: Path, settings: dict[str, Any], taskhub: Path) -> Path:
    """Write the config and have ``taskhub check`` validate it."""
    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    done = subprocess.run(
        [str(taskhub), "check", str(path)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise BenchError(f"taskhub check {path} failed:\n{done.stderr}")
    return path
