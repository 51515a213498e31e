"""Background samplers: a task.log's line count, a process's RSS."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from bench.procs import rss_kib

POLL = 0.02


class LogWatcher:
    """Counts the lines of a growing file from a thread, reading only new bytes, and
    remembers when the first line came and when the file last grew. With ``match``,
    only the lines containing it are counted (a line is counted once complete)."""

    def __init__(self, path: Path, match: bytes = b"") -> None:
        self.path = path
        self.match = match
        self.lines = 0
        self.first_at: float | None = None
        self.last_growth_at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        offset = 0
        while not self._stop.is_set():
            try:
                with self.path.open("rb") as f:
                    f.seek(offset)
                    chunk = f.read()
            except FileNotFoundError:
                chunk = b""
            chunk = chunk[: chunk.rfind(b"\n") + 1]  # whole lines only; the rest next time
            offset += len(chunk)
            if self.match:
                added = sum(self.match in line for line in chunk.splitlines())
            else:
                added = chunk.count(b"\n")
            if added:
                now = time.monotonic()
                self.lines += added
                if self.first_at is None:
                    self.first_at = now
                self.last_growth_at = now
            time.sleep(POLL)

    def wait_lines(self, count: int, timeout: float, alive: Callable[[], bool]) -> float | None:
        """Wait for ``count`` lines; the monotonic time they were seen, or None."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and alive():
            if self.lines >= count:
                return self.last_growth_at
            time.sleep(POLL)
        return self.last_growth_at if self.lines >= count else None

    def wait_quiet(self, quiet: float, timeout: float) -> bool:
        """Wait until the file has not grown for ``quiet`` seconds; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            last = self.last_growth_at
            if last is None or time.monotonic() - last >= quiet:
                return True
            time.sleep(POLL * 5)
        return False

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)


class RssSampler:
    """The peak VmRSS of a process, sampled every ``interval`` seconds."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_kib = rss_kib(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.peak_kib = max(self.peak_kib, rss_kib(self.pid))
            except (OSError, RuntimeError):
                return

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(2)
        return self.peak_kib
