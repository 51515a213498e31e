"""Processes the harness starts: a private Redis, servers and workers, wrk."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO

import redis

from tests.support.processes import free_port
from tests.support.redis_servers import server_options


class BenchError(RuntimeError):
    """A row cannot be measured (a process did not start, a tool is missing)."""


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=0.5) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def rss_kib(pid: int) -> int:
    """The resident set of a process, from /proc/PID/status (VmRSS, KiB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchError(f"no VmRSS for pid {pid}")


class Proc:
    """A child process whose output goes to a log file, stopped with SIGTERM."""

    def __init__(
        self,
        name: str,
        args: list[str],
        log: Path,
        *,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.args = args
        self.log = log
        self.started_at = time.monotonic()
        self._out: IO[bytes] = log.open("ab")
        self.proc = subprocess.Popen(
            args,
            cwd=cwd,
            env={**os.environ, **(env or {})},
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() reaches its children
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def wait_ready(self, check: str | int, timeout: float = 30) -> float:
        """Wait until ``check`` (a URL answering 200, or a port accepting connections)
        succeeds; returns the seconds since the process started."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise BenchError(f"{self.name} exited ({self.proc.returncode}):\n{self.tail()}")
            ready = http_ok(check) if isinstance(check, str) else port_open(check)
            if ready:
                return time.monotonic() - self.started_at
            time.sleep(0.05)
        self.stop()
        raise BenchError(f"{self.name} not ready after {timeout} s:\n{self.tail()}")

    def stop(self, timeout: float = 15) -> int | None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._out.close()
        return self.proc.returncode


class PrivateRedis:
    """``redis-server --port P --save '' --appendonly no`` of our own, on a free port."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise BenchError("redis-server is not installed (apt-get install redis-server)")
        self.port = port or free_port()
        if self.port == 6379:
            raise BenchError("--redis-port 6379 is the shared Redis; pick another port")
        if port_open(self.port):
            raise BenchError(f"port {self.port} is taken")
        self.proc = Proc(
            "redis-server", [binary, *server_options(self.port, workdir)], workdir / "redis.log"
        )
        self.proc.wait_ready(self.port, timeout=10)
        self.client = redis.Redis(port=self.port)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def flush(self) -> None:
        """Empty our private server between runs (never the shared one on 6379)."""
        assert self.port != 6379
        self.client.flushall()

    def used_memory(self) -> int:
        return int(self.client.info("memory")["used_memory"])

    def stop(self) -> None:
        self.client.close()
        self.proc.stop()
