"""``taskhub serve --workers N``: N server processes on one listening socket, kept running.

The supervisor binds the socket once and every child inherits it, rather than
each child binding its own with ``SO_REUSEPORT``. With one socket there is one
accept queue: a connection waits there until some live child takes it, so a
child that dies or restarts loses none (with ``SO_REUSEPORT`` the kernel hashes
each connection to one child's socket, and those queued on a dead child's are
reset); port 0 works; nothing else can take the port between restarts. The
price is balance: children race for each new connection instead of being dealt
them evenly, and a busy child, slower to get back to ``accept``, takes fewer.

Children are spawned (a fresh ``taskhub serve``), not forked: they inherit no
event loop and no Redis connection, and they import prometheus_client after
``PROMETHEUS_MULTIPROC_DIR`` is set. Each also gets one end of a socketpair, the
link (:mod:`taskhub.cli.supervised`): the child writes "ready" on it once it serves,
and the supervisor closes it to stop the child gracefully. The link also stops
children whose supervisor was killed.

The first child starts alone, so that a config or plugin that cannot start
fails once, with one message. A child that dies later is replaced, after a
backoff that grows while its replacements keep dying; five replacements in a row
that die before serving are a crash loop, and the supervisor gives up.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from taskhub.cli.supervised import READY
from taskhub.errors import StartupError
from taskhub.monitoring.exporter import MULTIPROC_ENV, multiprocess_dir, process_dead

logger = logging.getLogger(__name__)

START_TIMEOUT = 60.0  # seconds a child may take to serve
STABLE_AFTER = 10.0  # a child up this long had a good run: its slot's backoff starts over
FIRST_BACKOFF = 0.25
MAX_BACKOFF = 10.0
GIVE_UP_AFTER = 5  # replacements in a row that die before serving: a crash loop
KILL_MARGIN = 5.0  # seconds past the server's grace before a stopping child is killed
EXIT_USAGE = 2  # a child's "fix the config" exit code is passed on; anything else is 1


@dataclass
class Child:
    slot: int
    proc: subprocess.Popen[bytes]
    link: socket.socket
    since: float
    ready: bool = False

    @property
    def pid(self) -> int:
        return self.proc.pid


def describe(code: int) -> str:
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


class Supervisor:
    """Starts ``count`` copies of ``command`` on ``sock``, replaces those that die, and
    stops them all on SIGINT/SIGTERM; :meth:`run` returns the exit code."""

    def __init__(
        self,
        command: Sequence[str],
        count: int,
        sock: socket.socket,
        grace: float,
        env: Mapping[str, str],
        *,
        metrics_dir: Path | None = None,
    ) -> None:
        self.command = list(command)
        self.count = count
        self.sock = sock
        self.grace = grace
        self.env = dict(env)
        self.metrics_dir = metrics_dir
        self.children: dict[int, Child] = {}  # by slot
        self.selector = selectors.DefaultSelector()
        self.stops = 0  # SIGINT/SIGTERM received
        self._restarts: dict[int, float] = {}  # slot -> when to start its replacement
        self._quick_deaths: dict[int, int] = {}  # slot -> deaths in a row before STABLE_AFTER
        self._start_failures: dict[int, int] = {}  # slot -> deaths in a row before serving

    def run(self) -> int:
        with self._signals():
            # Said once a signal can no longer kill the supervisor before it has children
            # to stop (tests and scripts wait for this line, then may signal at once).
            if self.metrics_dir is not None:
                logger.info("metrics: multiprocess mode, files in %s", self.metrics_dir)
            try:
                code = self._start()
                if code is None:
                    code = self._supervise()
            except BaseException:
                self._stop(1)
                raise
            return self._stop(code)

    # ------------------------------------------------------------- phases

    def _start(self) -> int | None:
        """The first child alone, then the others; None once all serve, else an exit code."""
        self._spawn(0)
        code = self._until_serving()
        if code is None and self.count > 1:
            for slot in range(1, self.count):
                self._spawn(slot)
            code = self._until_serving()
        if code is None:
            pids = ", ".join(str(c.pid) for c in self.children.values())
            logger.info("%d server processes serving (pids %s)", self.count, pids)
        return code

    def _until_serving(self) -> int | None:
        deadline = time.monotonic() + START_TIMEOUT
        while not self.stops:
            for child, code in self._step(min(1.0, deadline - time.monotonic())):
                logger.error(
                    "server process %d %s while starting: giving up", child.pid, describe(code)
                )
                return EXIT_USAGE if code == EXIT_USAGE else 1
            if all(child.ready for child in self.children.values()):
                return None
            if time.monotonic() > deadline:
                logger.error("server processes did not serve within %g s", START_TIMEOUT)
                return 1
        return 0

    def _supervise(self) -> int:
        while not self.stops:
            now = time.monotonic()
            for slot, when in list(self._restarts.items()):
                if when <= now:
                    del self._restarts[slot]
                    self._spawn(slot)
            timeout = min((when - now for when in self._restarts.values()), default=1.0)
            for child, code in self._step(min(1.0, timeout)):
                gave_up = self._replace(child, code)
                if gave_up is not None:
                    return gave_up
        return 0

    def _replace(self, child: Child, code: int) -> int | None:
        """Schedule a replacement for a child that died; an exit code when it is a crash loop."""
        slot = child.slot
        if not child.ready:
            failures = self._start_failures[slot] = self._start_failures.get(slot, 0) + 1
            if failures >= GIVE_UP_AFTER:
                logger.error(
                    "server process %d %s before serving, %d replacements in a row: giving up",
                    child.pid,
                    describe(code),
                    failures,
                )
                return 1
        lived = time.monotonic() - child.since
        quick = 1 if lived >= STABLE_AFTER else self._quick_deaths.get(slot, 0) + 1
        self._quick_deaths[slot] = quick
        delay = min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** (quick - 1))
        logger.warning(
            "server process %d %s; starting another in %g s", child.pid, describe(code), delay
        )
        self._restarts[slot] = time.monotonic() + delay
        return None

    def _stop(self, code: int) -> int:
        """Close every link (each child then stops as on SIGTERM) and wait; a second
        signal sends SIGTERM, which makes them exit at once; past the grace, SIGKILL."""
        self.sock.close()
        self._restarts.clear()
        for child in self.children.values():
            self._unlink(child)
        if self.children:
            logger.info("stopping the server processes (%d)", len(self.children))
        stops = self.stops
        deadline = time.monotonic() + self.grace + KILL_MARGIN
        while self.children and time.monotonic() < deadline:
            for child, status in self._step(min(0.5, deadline - time.monotonic())):
                if status != 0:
                    logger.warning("server process %d %s", child.pid, describe(status))
                    code = code or 1
            if self.stops > stops:
                stops = self.stops
                logger.warning("signal again: stopping the server processes now")
                for child in self.children.values():
                    child.proc.send_signal(signal.SIGTERM)
        for child in list(self.children.values()):
            waited = self.grace + KILL_MARGIN
            logger.error("server process %d still runs after %g s: killed", child.pid, waited)
            child.proc.kill()
            child.proc.wait()
            self._forget(child)
            code = code or 1
        return code

    # ------------------------------------------------------------- mechanics

    def _spawn(self, slot: int) -> None:
        ours, theirs = socket.socketpair()
        fds = (self.sock.fileno(), theirs.fileno())
        command = [*self.command, "--listen-fd", str(fds[0]), "--link-fd", str(fds[1])]
        try:
            proc = subprocess.Popen(command, pass_fds=fds, env=self.env)
        except OSError as exc:
            ours.close()
            raise StartupError(f"cannot start a server process: {exc}") from exc
        finally:
            theirs.close()
        ours.setblocking(False)
        child = Child(slot, proc, ours, time.monotonic())
        self.children[slot] = child
        self.selector.register(ours, selectors.EVENT_READ, child)
        logger.debug("server process %d started", proc.pid)

    def _step(self, timeout: float) -> list[tuple[Child, int]]:
        """Wait up to ``timeout`` for a signal or a child's message; return the children
        that exited, with their exit codes."""
        for key, _ in self.selector.select(max(timeout, 0.0)):
            if isinstance(key.data, Child):
                self._heard(key.data)
            else:  # the signal wake-up socket: the handler already counted it
                with contextlib.suppress(BlockingIOError):
                    key.fileobj.recv(4096)  # type: ignore[union-attr]
        exited = []
        for child in list(self.children.values()):
            code = child.proc.poll()
            if code is not None:
                self._forget(child)
                exited.append((child, code))
        return exited

    def _heard(self, child: Child) -> None:
        try:
            data = child.link.recv(64)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # it is exiting; _step reaps it
            self._unlink(child)
        elif READY in data and not child.ready:
            child.ready = True
            self._start_failures[child.slot] = 0
            logger.info("server process %d serving", child.pid)

    def _unlink(self, child: Child) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(child.link)
        child.link.close()

    def _forget(self, child: Child) -> None:
        del self.children[child.slot]
        self._unlink(child)
        if self.metrics_dir is not None:
            process_dead(self.metrics_dir, child.pid)

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        """SIGINT/SIGTERM counted, SIGCHLD noticed; each wakes the selector."""
        wake_read, wake_write = socket.socketpair()
        for end in (wake_read, wake_write):
            end.setblocking(False)
        self.selector.register(wake_read, selectors.EVENT_READ, None)
        handled = (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD)
        previous = {signum: signal.signal(signum, self._on_signal) for signum in handled}
        old_wakeup = signal.set_wakeup_fd(wake_write.fileno(), warn_on_full_buffer=False)
        try:
            yield
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            self.selector.close()
            wake_read.close()
            wake_write.close()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGCHLD:
            return
        self.stops += 1
        if self.stops == 1:
            name = signal.Signals(signum).name
            logger.info("%s received: stopping (send it again to stop at once)", name)


def serve(
    server_socket: socket.socket, child_args: Sequence[str], count: int, grace: float, metrics: bool
) -> int:
    """Run ``taskhub serve CHILD_ARGS`` ``count`` times on ``server_socket``, supervised;
    with ``metrics``, in prometheus_client's multiprocess mode on a private directory."""
    command = [sys.executable, "-m", "taskhub", "serve", *child_args]
    env = dict(os.environ)
    with contextlib.ExitStack() as stack:
        directory = stack.enter_context(multiprocess_dir()) if metrics else None
        if directory is not None:
            env[MULTIPROC_ENV] = str(directory)
        supervisor = Supervisor(command, count, server_socket, grace, env, metrics_dir=directory)
        return supervisor.run()
