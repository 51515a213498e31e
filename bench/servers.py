"""The HTTP servers under taskhub, a dimension of the HTTP rows: taskhub's own server
plugins (``server.type``) and its ASGI app (``taskhub.asgi``) under ASGI servers.
Which of them this machine has, and the command lines that start each."""

from __future__ import annotations

import importlib.util
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

# In the order the rows run them; the first is taskhub's default server.
PLUGINS = ("sanic", "httptools")  # taskhub serve with server.type: NAME
ASGI = ("uvicorn", "granian")  # taskhub.asgi under the ASGI server NAME
SERVERS = (*PLUGINS, *ASGI)
DEFAULT = PLUGINS[0]
# taskhub's ASGI app in the server role alone (bench/asgi_app.py), and the bare ASGI
# app that answers the constant refusal (bench/ceiling.py).
TASKHUB_ASGI = "bench.asgi_app:app"
CEILING_ASGI = "bench.ceiling:app"


def registered_servers(plugins_output: str) -> list[str]:
    """The server names in ``taskhub plugins`` output (``  server: sanic, httptools``)."""
    names: list[str] = []
    for match in re.finditer(r"^\s+server: (.+)$", plugins_output, re.M):
        names += [name.strip() for name in match.group(1).split(",") if name.strip()]
    return names


def missing(server: str, registered: list[str], has_module: Callable[[str], bool]) -> str:
    """Why ``server`` cannot run here, in a few words, or "" when it can."""
    if server in PLUGINS:
        if server in registered:
            return ""
        listed = ", ".join(registered) or "none"
        return f"no server plugin {server!r} registered (taskhub plugins lists {listed})"
    if not has_module("taskhub.asgi"):
        return "taskhub.asgi not found (this taskhub has no ASGI app)"
    if not has_module(server):
        return f"{server} is not installed (pip install {server})"
    return ""


def module_found(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def availability(taskhub: Path, cwd: Path) -> dict[str, str]:
    """Every server, and why it cannot run here ("" when it can). ``taskhub plugins``
    runs in ``cwd``, a directory without ``./plugins``, as the harness's configs load
    none: built-in plugins and installed distributions only."""
    done = subprocess.run(
        [str(taskhub), "plugins"], cwd=cwd, capture_output=True, text=True, check=False
    )
    found = {
        server: missing(server, registered_servers(done.stdout), module_found) for server in SERVERS
    }
    if done.returncode != 0:
        failure = f"taskhub plugins failed: {(done.stderr or done.stdout).strip()[:200]}"
        found.update(dict.fromkeys(PLUGINS, failure))
    return found


def asgi_command(server: str, app: str, port: str) -> list[str]:
    """Arguments after ``python``: the ASGI server ``server`` serving ``app`` on
    127.0.0.1:``port`` in one process (one worker), on uvloop, without access logs."""
    if server == "uvicorn":
        return [
            *("-m", "uvicorn", app, "--host", "127.0.0.1", "--port", port),
            *("--workers", "1", "--no-access-log", "--log-level", "warning"),
            *("--loop", "uvloop", "--http", "httptools"),
        ]
    if server == "granian":
        return [
            *("-m", "granian", "--interface", "asgi", "--host", "127.0.0.1", "--port", port),
            *("--workers", "1", "--no-access-log", "--log-level", "warning"),
            *("--loop", "uvloop", "--http", "1", "--no-ws", app),
        ]
    raise ValueError(f"{server!r} is not an ASGI server the bench knows ({', '.join(ASGI)})")


def label(server: str) -> str:
    """How the table names taskhub on ``server``."""
    return f"taskhub serve ({server})" if server in PLUGINS else f"taskhub.asgi ({server})"
