"""Test helpers: taskhub as a real subprocess, private redis-servers, per-test Redis namespaces."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
import orjson
import redis
import yaml

from tests.support.redis_servers import pings, server_options

if TYPE_CHECKING:
    from taskhub.builtin.saq.redis_queue import HardenedRedisQueue

ROOT = Path(__file__).resolve().parents[2]
REDIS_URL = os.environ.get("TASKHUB_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
START_REDIS_HINT = (
    "start one with `redis-server --daemonize yes --port 6379 --save '' --appendonly no` "
    "(Debian: apt-get install redis-server), or run .ci/run, which does both; "
    "or point TASKHUB_TEST_REDIS_URL at another server"
)


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


LIMITER_PLUGIN = """
from taskhub import Limiter, RatePolicy, hookimpl

class {cls}(Limiter):
    name = "{name}"
    lua = "{lua}"
    def policy(self):
        return RatePolicy(1, 1)

@hookimpl
def register_limiters(register):
    register({cls})
"""


def limiter_plugin(cls: str, name: str, lua: str = "return {}") -> str:
    """Source of a plugin module registering a limiter ``name`` with Lua ``lua``."""
    return LIMITER_PLUGIN.format(cls=cls, name=name, lua=lua)


@dataclass(frozen=True)
class Namespace:
    """Keys one test owns on the shared Redis: its limiter prefix and its queue."""

    id: str

    @classmethod
    def new(cls) -> Namespace:
        return cls(uuid.uuid4().hex[:10])

    @property
    def prefix(self) -> str:
        return f"taskhub-test:{self.id}"

    @property
    def queue(self) -> str:
        return f"test-{self.id}"

    @property
    def patterns(self) -> list[str]:
        plain = [f"{self.prefix}:*", f"saq:{self.queue}:*", f"saq:job:{self.queue}:*"]
        # A sharded queue's keys carry the hash tag {<queue>.<shard>} (taskhub.store.sharding).
        return [*plain, f"saq:{{{self.queue}.*", f"saq:job:{{{self.queue}.*"]

    def keys(self, client: redis.Redis) -> set[bytes]:
        found: set[bytes] = set()
        for pattern in self.patterns:
            found.update(client.scan_iter(match=pattern, count=1000))
        return found

    def snapshot(self, client: redis.Redis) -> dict[bytes, Any]:
        """Every key this namespace owns, with its contents (except volatile worker stats)."""
        state: dict[bytes, Any] = {}
        for key in self.keys(client):
            if b":stats" in key or b":worker_info:" in key or b":sweep" in key:
                continue
            kind = client.type(key)
            if kind == b"hash":
                state[key] = client.hgetall(key)
            elif kind == b"list":
                state[key] = client.lrange(key, 0, -1)
            elif kind == b"zset":
                state[key] = client.zrange(key, 0, -1, withscores=True)
            else:
                state[key] = client.get(key)
        return state

    def cleanup(self, client: redis.Redis) -> None:
        keys = self.keys(client)
        if keys:
            client.delete(*keys)

    def queued(self, client: redis.Redis) -> int:
        return client.llen(f"saq:{self.queue}:queued")


def config_dict(ns: Namespace, redis_url: str, **sections: Any) -> dict[str, Any]:
    """A config on ``redis_url`` in namespace ``ns``; ``sections`` replace whole top-level keys."""
    config: dict[str, Any] = {
        "redis": {"url": redis_url, "key_prefix": ns.prefix},
        "plugins_dir": str(ROOT / "plugins"),
        "server": {"type": "sanic", "host": "127.0.0.1", "port": 0, "graceful_shutdown": 2},
        "limiter": {"type": "token_bucket", "capacity": 20, "refill": 20, "period": 60, "block": 1},
        "queue": {"type": "saq", "name": ns.queue, "concurrency": 10, "shutdown_grace": 2},
        "sinks": [{"type": "file_log", "path": "task.log"}],
        # Workers of parallel tests (and sessions) share the host: never a fixed port.
        "metrics": {"worker_port": 0},
    }
    config.update(sections)
    return config


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


class TaskhubProcess:
    """``python -m taskhub ...`` in a directory, with its output collected as it runs."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.cwd = cwd
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.lines: list[str] = []
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self, wait_for: str | None = "listening on ", timeout: float = 20) -> TaskhubProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "taskhub", *self.args],
            cwd=self.cwd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
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
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def open_request(url: str, body: bytes) -> socket.socket:
    """A connection holding a POST /task whose body lacks its last byte (send it to finish)."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    head = (
        f"POST /task HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    sock.sendall(head + body[:-1])
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict[str, object]]:
    data = b""
    while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < content_length(data):
        chunk = sock.recv(65_536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), orjson.loads(body)


def content_length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def serving_pid(client: socket.socket, pids: Iterable[int]) -> int | None:
    """Which of ``pids`` holds the server end of ``client``'s open TCP connection, read
    from /proc: tells which process answered, at no cost to the server."""
    server_port, client_port = client.getpeername()[1], client.getsockname()[1]
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, remote = (int(a.rsplit(":", 1)[1], 16) for a in fields[1:3])
            if (local, remote) == (server_port, client_port):
                inodes.add(f"socket:[{fields[9]}]")
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in inodes:
                        return pid
    return None


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


class PrivateRedis:
    """A redis-server of the test's own, on a free port, that the test may stop and restart.

    ``aof=True`` turns on the append-only file with ``appendfsync always``: Redis
    fsyncs every write before it replies, so even a SIGKILL loses nothing it
    acknowledged, and a restart (same port, same directory) loads it all back.
    """

    def __init__(self, directory: Path, *, aof: bool = False, password: str = "") -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(f"redis-server is not installed: {START_REDIS_HINT}")
        self.binary = binary
        self.directory = directory
        self.aof = aof
        self.password = password
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> PrivateRedis:
        """Start, or start again after stop() or kill(), on the same port and directory."""
        options = server_options(self.port, self.directory, aof=self.aof)
        if self.password:
            options += ["--requirepass", self.password]
        self.proc = subprocess.Popen(
            [self.binary, *options],
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
        return redis.Redis(port=self.port, password=self.password or None)


# Handlers for delivery tests. Each records what it needs in its worker's working
# directory, so a test can steer one worker (a flag file) without touching another.
DELIVERY_HANDLERS = """
import asyncio
import time
from pathlib import Path

from taskhub import RetryLater, Task, TaskHandler, hookimpl


class Sleepy(TaskHandler):
    '''Sleeps payload["seconds"]; not at all where fast.flag exists.'''

    name = "sleepy"

    async def run(self, task: Task) -> str:
        if not Path("fast.flag").exists():
            await asyncio.sleep((task.payload or {}).get("seconds", 0))
        return "slept"


class Flaky(TaskHandler):
    '''Fails its first two attempts; notes when each attempt started.'''

    name = "flaky"

    async def run(self, task: Task) -> int:
        with open(f"attempts-{task.job_id}", "a") as times:
            times.write(f"{time.time()}\\n")
        if task.attempt < 3:
            raise ConnectionError(f"upstream down (attempt {task.attempt})")
        return task.attempt


class Later(TaskHandler):
    '''Asks to run again in payload["delay"] seconds, once.'''

    name = "later"

    async def run(self, task: Task) -> float:
        if task.attempt == 1:
            raise RetryLater(delay=task.payload["delay"], reason="not ready yet")
        return time.time()


class Broken(TaskHandler):
    '''Fails while broken.flag exists here.'''

    name = "broken"

    async def run(self, task: Task) -> str:
        if Path("broken.flag").exists():
            raise ValueError("boom")
        return "fixed"


@hookimpl
def register_handlers(register):
    for handler in (Sleepy, Flaky, Later, Broken):
        register(handler)
"""


def delivery_plugins(directory: Path) -> str:
    """A plugins_dir holding DELIVERY_HANDLERS; returns its path for the config."""
    plugins = directory / "plugins"
    plugins.mkdir(parents=True, exist_ok=True)
    (plugins / "delivery_handlers.py").write_text(DELIVERY_HANDLERS)
    return str(plugins)


def get_job(url: str, job_id: str) -> dict[str, Any] | None:
    """The job's state from ``GET /task/{id}``, or None on 404."""
    response = httpx.get(f"{url}/task/{job_id}", timeout=10)
    if response.status_code == 404:
        return None
    response.raise_for_status()
    return response.json()


async def store_queued(queue: HardenedRedisQueue, **fields: Any) -> str:
    """Store a job as admission does (last in line) and return its id."""
    key = uuid.uuid4().hex
    job = {"queue": queue.name, "key": key, "status": "queued", **fields}
    job_id = queue.job_id(key)
    await queue.redis.set(job_id, orjson.dumps(job))
    await queue.redis.zadd(queue._incomplete, {job_id: 0})
    await queue.redis.rpush(queue._queued, job_id)
    return job_id
