"""ASGI servers serving taskhub.asgi in the tests: uvicorn, hypercorn and granian, each a
subprocess on a free port of its own, on the config ``TASKHUB_CONFIG`` names."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx

from tests.support.processes import TaskhubProcess, free_port, wait_until

# Each server's command line, as docs/running.md gives it: (module, arguments).
COMMANDS: dict[str, Callable[[str, int], tuple[str, list[str]]]] = {
    # --no-proxy-headers: the client address is the peer's, and limits.trusted_proxies
    # alone decides whom to believe about X-Forwarded-For, as with `taskhub run`
    "uvicorn": lambda app, port: (
        "uvicorn",
        [app, "--host", "127.0.0.1", "--port", str(port), "--no-proxy-headers"],
    ),
    "hypercorn": lambda app, port: ("hypercorn", ["--bind", f"127.0.0.1:{port}", app]),
    "granian": lambda app, port: (
        "granian",
        ["--interface", "asgi", "--host", "127.0.0.1", "--port", str(port), app],
    ),
}
ASGI_SERVERS = tuple(COMMANDS)


def start_asgi(
    server: str,
    config: Path,
    cwd: Path,
    *,
    app: str = "taskhub.asgi:app",
    ready_path: str = "/health",
    args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> TaskhubProcess:
    """``server`` serving ``app`` with ``TASKHUB_CONFIG=config``, once ``ready_path``
    answers; its ``url`` set."""
    port = free_port()
    module, argv = COMMANDS[server](app, port)
    environment = {"TASKHUB_CONFIG": str(config), **(env or {})}
    process = TaskhubProcess([*argv, *args], cwd=cwd, env=environment, module=module)
    process.start(wait_for=None)
    process.url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        assert process.proc is not None
        if process.proc.poll() is not None:
            raise AssertionError(f"{server} exited:\n{process.output}")
        try:
            return httpx.get(process.url + ready_path, timeout=2).status_code < 500
        except httpx.TransportError:
            return False

    if not wait_until(answers, 30, 0.1):
        process.kill()
        raise AssertionError(f"{server} did not serve within 30 s:\n{process.output}")
    return process
