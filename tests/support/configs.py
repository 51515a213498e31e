"""taskhub configs for tests: one in a test's namespace, a crash-test queue, the YAML file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.support.namespaces import Namespace

ROOT = Path(__file__).resolve().parents[2]


# Every HTTP server plugin: the tests that talk HTTP run against each (tests/conftest.py).
SERVER_TYPES = ("sanic", "httptools")


def config_dict(
    ns: Namespace, redis_url: str, server_type: str = "sanic", **sections: Any
) -> dict[str, Any]:
    """A config on ``redis_url`` in namespace ``ns``, served by ``server_type``;
    ``sections`` replace whole top-level keys."""
    config: dict[str, Any] = {
        "redis": {"url": redis_url, "key_prefix": ns.prefix},
        "plugins_dir": str(ROOT / "plugins"),
        "server": {"type": server_type, "host": "127.0.0.1", "port": 0, "graceful_shutdown": 2},
        "limiter": {"type": "token_bucket", "capacity": 20, "refill": 20, "period": 60, "block": 1},
        "queue": {"type": "saq", "name": ns.queue, "concurrency": 10, "shutdown_grace": 2},
        "sinks": [{"type": "file_log", "path": "task.log"}],
        # Workers of parallel tests (and sessions) share the host: never a fixed port.
        "metrics": {"worker_port": 0},
    }
    config.update(sections)
    return config


def served_by(config: dict[str, Any], server_type: str) -> dict[str, Any]:
    """``config`` with its server section, if it has one, on ``server_type``."""
    if "server" not in config:
        return config
    return {**config, "server": {**config["server"], "type": server_type}}


def crash_queue(ns: Namespace) -> dict[str, Any]:
    """A queue section for crash tests: a job whose worker (or Redis) went away runs
    again within about 2 s (1 s heartbeats and sweeps), with attempts to spare."""
    return {
        "type": "saq",
        "name": ns.queue,
        "concurrency": 20,
        "retries": 10,
        "heartbeat": 1,
        "sweep_interval": 1,
    }


def write_config(directory: Path, config: dict[str, Any], name: str = "config.yaml") -> Path:
    path = directory / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
