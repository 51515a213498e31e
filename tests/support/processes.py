"""Processes the tests start: taskhub itself (``python -m taskhub``); free ports, polling."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll ``predicate`` until it is truthy or ``timeout`` passes; returns its last result."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(interval)


class TaskhubProcess:
    """``python -m taskhub ...`` in a directory, with its output collected as it runs;
    ``module`` runs another (an ASGI server), in its own process group (``kill`` ends
    the workers it spawns too)."""

    def __init__(
        self,
        args: list[str],
        cwd: Path,
        env: dict[str, str] | None = None,
        module: str = "taskhub",
    ) -> None:
        self.args = args
        self.cwd = cwd
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.module = module
        self.lines: list[str] = []
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self, wait_for: str | None = "listening on ", timeout: float = 20) -> TaskhubProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module, *self.args],
            cwd=self.cwd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=self.module != "taskhub",
        )
        threading.Thread(target=self._collect, daemon=True).start()
        if wait_for:
            line = self.wait_for(wait_for, timeout)
            assert line, f"taskhub did not start:\n{self.output}"
            match = re.search(r"listening on (http://[^\s\"]+)", line)  # text or JSON logs
            if match:
                self.url = match.group(1)
        return self

    def _collect(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, text: str, timeout: float = 10) -> str | None:
        def find() -> str | None:
            for line in list(self.lines):
                if text in line:
                    return line
            if self.proc is not None and self.proc.poll() is not None:
                time.sleep(0.1)  # let the reader thread catch the last lines
                return next((line for line in list(self.lines) if text in line), None)
            return None

        return wait_until(find, timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            message = f"taskhub did not stop within {timeout} s:\n{self.output}"
            raise AssertionError(message) from None

    def wait(self, timeout: float = 20) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is None:
            return
        if self.module != "taskhub":  # the server's own workers too
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def run_cli(args: list[str], cwd: Path, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "taskhub", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        check=False,
    )
