"""The shared Redis the tests use, and private redis-servers (the benchmark's as well)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

import redis

from tests.support.processes import free_port, wait_until

REDIS_URL = os.environ.get("TASKHUB_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
START_REDIS_HINT = (
    "start one with `redis-server --daemonize yes --port 6379 --save '' --appendonly no` "
    "(Debian: apt-get install redis-server), or run .ci/run, which does both; "
    "or point TASKHUB_TEST_REDIS_URL at another server"
)


def pings(client: redis.Redis) -> bool:
    with contextlib.suppress(redis.ConnectionError):
        return bool(client.ping())
    return False


def server_options(
    port: int, directory: Path, *, aof: bool = False, host: str = "127.0.0.1"
) -> list[str]:
    """redis-server's options for a private server on loopback, keeping nothing on disk
    unless ``aof`` (then every write is fsynced before Redis replies); ``host`` is another
    loopback address for a server that moved. The tests' servers, the local cluster's
    nodes and the benchmark's server all start with it."""
    persistence = ["yes", "--appendfsync", "always"] if aof else ["no"]
    # Another loopback address: the cluster bus connects from it too, else its peers see
    # 127.0.0.1 and call back where nothing listens (Redis 7.0's bind-source-addr).
    source = [] if host == "127.0.0.1" else ["--bind-source-addr", host]
    return [
        *source,
        "--port",
        str(port),
        "--bind",
        host,
        "--save",
        "",
        "--appendonly",
        *persistence,
        "--dir",
        str(directory),
    ]


class PrivateRedis:
    """A redis-server of the test's own, on a free port, that the test may stop and restart.

    ``aof=True`` turns on the append-only file with ``appendfsync always``: Redis
    fsyncs every write before it replies, so even a SIGKILL loses nothing it
    acknowledged, and a restart (same port, same directory) loads it all back.
    """

    def __init__(
        self,
        directory: Path,
        *,
        aof: bool = False,
        password: str = "",
        args: Sequence[str] = (),
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(f"redis-server is not installed: {START_REDIS_HINT}")
        self.binary = binary
        self.directory = directory
        self.aof = aof
        self.password = password
        self.args = list(args)  # more redis-server options, e.g. ["--maxmemory-policy", ...]
        self.port = free_port()
        self.host = "127.0.0.1"  # set another loopback address, then start(): it moved
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    def options(self) -> list[str]:
        options = server_options(self.port, self.directory, aof=self.aof, host=self.host)
        if self.password:
            options += ["--requirepass", self.password]
        return [*options, *self.args]

    def start(self) -> PrivateRedis:
        """Start, or start again after stop() or kill(), on the same port and directory."""
        self.proc = subprocess.Popen(
            [self.binary, *self.options()],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = self.client()
        assert wait_until(lambda: pings(client), 10), "private redis-server did not start"
        client.close()
        return self

    def stop(self) -> None:
        """SIGTERM: Redis flushes its append-only file and exits."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL: Redis gets no chance to write anything more."""
        self._end(signal.SIGKILL)

    def _end(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)
        self.proc = None

    def client(self) -> redis.Redis:
        return redis.Redis(self.host, self.port, password=self.password or None)

    def go_down(self, *, keep_data: bool) -> None:
        """The whole store lost at once (SIGKILL); ``keep_data``: SAVE first, so the restart
        loads what Redis held, else it comes back empty."""
        go_down([self.client], [self.directory], self.kill, keep_data=keep_data)


def go_down(
    clients: list[Callable[[], redis.Redis]],
    directories: list[Path],
    kill: Callable[[], None],
    *,
    keep_data: bool,
) -> None:
    """SAVE on every server when ``keep_data`` (a snapshot that a restart loads, though
    the servers keep nothing on disk on their own), then ``kill``; else kill and remove
    any snapshot, so they come back empty. Shared by PrivateRedis and LocalCluster."""
    if keep_data:
        for make in clients:
            with make() as client:
                client.save()
    kill()
    if not keep_data:
        for directory in directories:
            (directory / "dump.rdb").unlink(missing_ok=True)
