"""The whole store down: a single Redis, or every node of a Redis Cluster, killed at once.

A real ``taskhub serve`` (with the dashboard and metrics on) and ``taskhub worker``
run on a private store; a prober keeps calling every path the server has on Redis
(``POST /task``, ``GET /task/{id}``, ``/metrics``, ``/dashboard/api/summary``). The
worker runs a few jobs that finish while the store is down (their heartbeats and
settles fail), then is idle: its take, upkeep, sweep and SAQ's own upkeep are what it
does. Every node is SIGKILLed and kept down for several times the Redis timeouts, then
started again on the same addresses: first with its data (a snapshot taken just
before), then empty (nothing loaded: scripts, queue keys and worker stats gone).
Each time:

- while down, the server answers 503 with Retry-After (``/metrics`` still 200,
  without the queue's gauge), and neither process spins: the CPU each uses while
  down is read from ``/proc/<pid>/stat``;
- each process logs a few lines (an outage starting and ending per path), no
  traceback and nothing at ERROR;
- with no restart, ``POST /task`` answers 200 again, the job it admits completes,
  and its status, the dashboard and the queue gauge are back, within RECOVERY; back
  with its data, the jobs that could not settle run again (the sweep finds them stale).

``PYTEST_ARGS="-s -k test_store_outage" make test`` prints the figures.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
import pytest

from tests.support.cluster import LocalCluster
from tests.support.configs import config_dict, crash_queue
from tests.support.dashboard import AUTH, TOKEN
from tests.support.namespaces import Namespace
from tests.support.plugin_sources import delivery_plugins
from tests.support.processes import TaskhubProcess, wait_until
from tests.support.redis_servers import PrivateRedis
from tests.support.replies import assert_quiet, completions

# Processes and Redis, slow: on the default server only (the HTTP paths are the same code).
pytestmark = pytest.mark.servers("sanic")

TIMEOUT = 1.0  # redis.connect_timeout and redis.socket_timeout
DOWN = 6.0  # seconds every node stays down: several times every timeout and interval
RECOVERY = 10.0  # seconds from the nodes' restart to a new job completed
SETTLE = 3.0  # seconds after recovery for every path's "reachable again" line
PROBE_EVERY = 0.2  # seconds between two rounds of the prober
CPU_SHARE = 0.1  # the most CPU a process may use while down, in seconds per second down
MAX_LINES = 14  # the most lines a process may log for one outage (start and end per path)
IN_FLIGHT = 3  # jobs running when the store goes down: they finish, and cannot settle, in it
SLEEP = 1.5  # seconds each of them runs


class Store(Protocol):
    def go_down(self, *, keep_data: bool) -> None: ...


@dataclass
class Probe:
    """What the prober saw: (path, status) per call, with when it was sent."""

    url: str
    job_id: str
    calls: list[tuple[float, str, int]] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        users = iter(range(10**9))
        with httpx.Client(timeout=10) as http:
            while not self.done.is_set():
                sent = time.monotonic()
                post = http.post(f"{self.url}/task", json={"user_id": f"p{next(users)}"})
                self._seen(sent, "POST /task", post)
                self._seen(sent, "GET /task", http.get(f"{self.url}/task/{self.job_id}"))
                self._seen(sent, "/metrics", http.get(f"{self.url}/metrics"))
                summary = http.get(f"{self.url}/dashboard/api/summary", headers=AUTH)
                self._seen(sent, "/dashboard", summary)
                time.sleep(PROBE_EVERY)

    def _seen(self, sent: float, path: str, response: httpx.Response) -> None:
        if response.status_code == 503:
            assert response.headers.get("Retry-After"), (path, response.headers)
        if response.status_code == 200 and path == "POST /task":
            self.job_id = response.json()["job_id"]
        self.calls.append((sent, path, response.status_code))

    def between(self, start: float, end: float) -> dict[str, Counter[int]]:
        seen: dict[str, Counter[int]] = {}
        for sent, path, status in list(self.calls):
            if start <= sent <= end:
                seen.setdefault(path, Counter())[status] += 1
        return seen


def cpu_seconds(process: TaskhubProcess) -> float:
    """User plus system CPU time the process has used so far."""
    assert process.proc is not None
    stat = Path(f"/proc/{process.proc.pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def outage_config(ns: Namespace, url: str, nodes: list[str], directory: Path) -> dict[str, Any]:
    config = config_dict(
        ns,
        url,
        queue=crash_queue(ns),
        dashboard={"enabled": True, "token": TOKEN},
        plugins_dir=delivery_plugins(directory),
        tasks={"log_completion": {}, "sleepy": {}},
    )
    config["redis"].update(connect_timeout=TIMEOUT, socket_timeout=TIMEOUT)
    if nodes:
        config["redis"].update(cluster=True, nodes=nodes)
    return config


@pytest.fixture(params=["single", "cluster"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Any, str, list[str]]]:
    """A private store the test may kill whole: (store, url, other seed nodes)."""
    if request.param == "single":
        directory = tmp_path / "redis"
        directory.mkdir()
        server = PrivateRedis(directory).start()
        try:
            yield server, server.url, []
        finally:
            server.kill()
        return
    cluster = LocalCluster.start(replicas=0)
    try:
        yield cluster, cluster.url, cluster.urls[1:]
    finally:
        cluster.stop()


def come_back(store: Any) -> None:
    if isinstance(store, PrivateRedis):
        store.start()
    else:
        store.come_back()


def test_the_whole_store_down_then_back_with_and_without_its_data(
    tmp_path: Path, store: tuple[Any, str, list[str]], spawn: Callable[..., TaskhubProcess]
) -> None:
    backend, url, nodes = store
    ns = Namespace.new()
    config = outage_config(ns, url, nodes, tmp_path)
    server = spawn(config, "serve", cwd=tmp_path / "server")
    worker = spawn(config, "worker", cwd=tmp_path / "worker", wait_for="started (worker)")
    log = tmp_path / "worker" / "task.log"
    first = httpx.post(f"{server.url}/task", json={"user_id": "first"}, timeout=10)
    assert first.status_code == 200, first.text
    job_id = first.json()["job_id"]
    assert wait_until(lambda: job_id in completions(log), 15), worker.output

    probe = Probe(server.url, job_id)
    prober = threading.Thread(target=probe.run, daemon=True)
    prober.start()
    try:
        time.sleep(1)
        for keep_data in (True, False):
            outage(backend, keep_data, probe, server, worker, log)
    finally:
        probe.done.set()
        prober.join(15)
    assert server.proc is not None and server.proc.poll() is None  # never restarted
    assert worker.stop() == 0
    assert_quiet(server)
    assert_quiet(worker)


def outage(
    store: Any,
    keep_data: bool,
    probe: Probe,
    server: TaskhubProcess,
    worker: TaskhubProcess,
    log: Path,
) -> None:
    processes = {"server": server, "worker": worker}
    marks = {name: len(p.lines) for name, p in processes.items()}
    running = [run_sleepy(server.url, f"s{i}") for i in range(IN_FLIGHT)]
    time.sleep(0.5)  # taken and claimed: they settle while the store is down
    store.go_down(keep_data=keep_data)
    down = time.monotonic()
    cpu_before = {name: cpu_seconds(p) for name, p in processes.items()}
    time.sleep(DOWN)
    cpu = {name: cpu_seconds(p) - cpu_before[name] for name, p in processes.items()}
    back = time.monotonic()  # the nodes are started: recovery is counted from here
    lasted = back - down
    come_back(store)
    up = time.monotonic() - back  # until the store itself serves (a cluster: state ok)
    while_down = probe.between(down + TIMEOUT * 2, back)  # past the calls in flight at the kill

    def admitted() -> str | None:
        response = httpx.post(f"{server.url}/task", json={"user_id": "after"}, timeout=10)
        return response.json()["job_id"] if response.status_code == 200 else None

    job_id = wait_until(admitted, RECOVERY, 0.1)
    assert job_id, f"no 200 within {RECOVERY} s\n{server.output}"
    admitting = time.monotonic() - back
    assert wait_until(lambda: job_id in completions(log), RECOVERY), worker.output
    completed = time.monotonic() - back
    assert completed < RECOVERY

    def serves_all() -> bool:
        status = httpx.get(f"{server.url}/task/{job_id}", timeout=10)
        summary = httpx.get(f"{server.url}/dashboard/api/summary", headers=AUTH, timeout=10)
        metrics = httpx.get(f"{server.url}/metrics", timeout=10)
        return (
            status.status_code == 200
            and status.json()["status"] == "complete"
            and summary.status_code == 200
            and "taskhub_queue_jobs{" in metrics.text
        )

    assert wait_until(serves_all, RECOVERY, 0.1), server.output
    everything = time.monotonic() - back
    if keep_data:  # still running as the store saw them last: they run again, once stale
        again = wait_until(lambda: all(completions(log)[j] >= 2 for j in running), RECOVERY)
        assert again, (completions(log), worker.output)
    time.sleep(SETTLE)
    lines = {name: p.lines[marks[name] :] for name, p in processes.items()}
    how = "with its data" if keep_data else "empty"
    print(
        f"\nstore outage ({how}): down {lasted:.1f} s; after the restart: the store serving "
        f"after {up:.2f} s, the first 200 after {admitting:.2f} s, "
        f"a new job completed after {completed:.2f} s, every path back after "
        f"{everything:.2f} s; CPU while down: "
        + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in cpu.items())
        + "; lines logged: "
        + ", ".join(f"{name} {len(text)}" for name, text in lines.items())
        + f"; while down: { {path: dict(c) for path, c in while_down.items()} }"
    )
    for name, text in lines.items():
        print(f"--- {name}\n" + "\n".join(text))

    # While down: 503 with Retry-After (checked per call), the metrics without the gauge.
    assert set(while_down) == {"POST /task", "GET /task", "/metrics", "/dashboard"}, while_down
    for path, statuses in while_down.items():
        assert set(statuses) == ({200} if path == "/metrics" else {503}), (path, statuses)
    for name, seconds in cpu.items():
        assert seconds < CPU_SHARE * lasted, f"{name} used {seconds:.2f} s of CPU in {lasted:.1f} s"
    for name, text in lines.items():
        assert len(text) <= MAX_LINES, (name, text)
        assert not any("Traceback" in line or " ERROR " in line for line in text), (name, text)
        # each path: one line when its outage starts, one when it ends
        started, ended = outages(text, " is unreachable"), outages(text, " is reachable again")
        assert started and set(started.values()) == {1} and started == ended, (name, text)


def run_sleepy(url: str, user: str) -> str:
    body = {"user_id": user, "task": "sleepy", "payload": {"seconds": SLEEP}}
    response = httpx.post(f"{url}/task", json=body, timeout=10)
    assert response.status_code == 200, response.text
    return str(response.json()["job_id"])


def outages(lines: list[str], saying: str) -> Counter[str]:
    """How many lines say ``saying`` about each thing (``Redis (admission)``...)."""
    return Counter(line.split(": ", 1)[1].split(saying)[0] for line in lines if saying in line)
