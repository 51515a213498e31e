"""``taskhub serve --workers N``: N real server processes on one port, on the real Redis.

Which child answered a request is read from /proc (the process holding the server
end of the connection), so the server carries no debug header for the tests.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from tests.support.configs import config_dict, served_by, write_config
from tests.support.http_requests import open_request, read_response, serving_pid
from tests.support.namespaces import Namespace
from tests.support.processes import TaskhubProcess, run_cli, wait_until

SERVING = "server processes serving"
SERVER_PLUGIN = """
from taskhub import Server, hookimpl


class Lone(Server):
    name = "lone"


@hookimpl
def register_servers(register):
    register(Lone)
"""
REFUSE_PLUGIN = """
from pathlib import Path

from taskhub import hookimpl
from taskhub.errors import StartupError


@hookimpl
def startup(hub):
    if Path("refuse.flag").exists():
        raise StartupError("refuse.flag is here, so this process will not start")
"""

Supervise = Callable[..., TaskhubProcess]
SERVER = {"type": "sanic", "host": "127.0.0.1", "port": 0}


@pytest.fixture
def supervise(
    tmp_path: Path, ns: Namespace, redis_url: str, server_type: str
) -> Iterator[Supervise]:
    """Start ``taskhub serve CONFIG --workers N`` on ``server_type``; afterwards kill it and
    every child it had."""
    started: list[TaskhubProcess] = []

    def start(count: int = 2, wait: bool = True, **sections: Any) -> TaskhubProcess:
        config = served_by(config_dict(ns, redis_url, **sections), server_type)
        config = write_config(tmp_path, config)
        process = TaskhubProcess(["serve", str(config), "--workers", str(count)], cwd=tmp_path)
        started.append(process)
        process.start(SERVING if wait else None, timeout=60)
        if wait:
            line = process.wait_for("listening on ") or ""
            process.url = line.rsplit(" ", 1)[-1]
        return process

    yield start
    for process in started:
        with contextlib.suppress(AssertionError):  # SIGTERM first: it removes its metrics dir
            process.stop(timeout=15)
        process.kill()
        for pid in serving_pids(process):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def serving_pids(process: TaskhubProcess) -> list[int]:
    """Every child that reported serving, in order (replacements included)."""
    pattern = re.compile(r"server process (\d+) serving")
    return [int(m.group(1)) for line in list(process.lines) if (m := pattern.search(line))]


def metrics_dir(process: TaskhubProcess) -> Path:
    line = process.wait_for("metrics: multiprocess mode, files in ") or ""
    return Path(line.rsplit(" ", 1)[-1])


def alive(pid: int) -> bool:
    """Running, and not a zombie waiting for a reaper."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def ask(
    url: str, pids: list[int], method: str = "GET", path: str = "/health", body: bytes = b""
) -> tuple[int, bytes, int | None]:
    """One request on a new connection: its status, its body, and which pid answered."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    try:
        headers = {"Content-Type": "application/json"} if body else {}
        connection.request(method, path, body=body or None, headers=headers)
        response = connection.getresponse()
        data = response.read()
        assert connection.sock is not None
        return response.status, data, serving_pid(connection.sock, pids)
    finally:
        connection.close()


def submit(url: str, pids: list[int], user: str) -> tuple[int, bytes, int | None]:
    return ask(url, pids, "POST", "/task", orjson.dumps({"user_id": user}))


def job_ids(client: redis.Redis, ns: Namespace) -> set[str]:
    prefix = f"saq:job:{ns.queue}:"
    return {key.decode()[len(prefix) :] for key in client.scan_iter(match=f"{prefix}*")}


def test_every_process_answers_on_the_one_port(supervise: Supervise) -> None:
    server = supervise(count=3)
    pids = serving_pids(server)
    assert len(set(pids)) == 3, server.output
    seen: set[int | None] = set()

    def all_answered() -> bool:
        status, _, pid = ask(server.url, pids)
        assert status == 200
        seen.add(pid)
        return seen >= set(pids)

    assert wait_until(all_answered, 30, 0), f"only {seen} of {pids} answered"
    assert None not in seen


def test_sigterm_finishes_requests_in_flight_and_keep_alive_clients_lose_nothing(
    supervise: Supervise, ns: Namespace, sync_redis: redis.Redis
) -> None:
    grace = 5
    server = supervise(server={**SERVER, "graceful_shutdown": grace})
    pids = serving_pids(server)
    held = open_request(server.url, orjson.dumps({"user_id": "held"}))
    admitted: list[str] = []
    answers: list[int] = []
    signalled = threading.Event()
    unexpected: list[BaseException] = []

    def keep_alive_client(number: int) -> None:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            for request in range(100_000):
                try:
                    response = client.post("/task", json={"user_id": f"c{number}-{request}"})
                except httpx.TransportError as exc:
                    if not signalled.is_set():
                        unexpected.append(exc)
                    if isinstance(exc, httpx.ConnectError):
                        return  # nobody listens any more
                    continue  # the server closed this idle keep-alive connection: reconnect
                answers.append(response.status_code)
                if response.status_code == 200:
                    admitted.append(response.json()["job_id"])

    threads = [threading.Thread(target=keep_alive_client, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    assert wait_until(lambda: len(admitted) >= 50, 20), server.output
    started = time.monotonic()
    signalled.set()
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)  # the children are draining now
    held.sendall(b"}")  # the last byte of its body
    status, body = read_response(held)
    held.close()
    for thread in threads:
        thread.join(30)

    assert server.wait(grace + 10) == 0, server.output
    assert time.monotonic() - started < grace + 2
    assert not unexpected
    assert status == 200, body
    assert set(answers) == {200}, server.output
    assert not any(alive(pid) for pid in pids)
    # Every 200 is a stored job, and nothing was stored without its 200.
    assert job_ids(sync_redis, ns) == {*admitted, body["job_id"]}
    assert "Traceback" not in server.output


def test_a_killed_process_is_replaced_and_no_connection_is_lost(supervise: Supervise) -> None:
    server = supervise()
    first, second = serving_pids(server)
    statuses = [ask(server.url, [])[0] for _ in range(5)]
    os.kill(first, signal.SIGKILL)
    statuses += [ask(server.url, [])[0] for _ in range(20)]  # the other one answers meanwhile
    assert server.wait_for(f"server process {first} was killed by SIGKILL; starting another")
    assert wait_until(lambda: len(serving_pids(server)) == 3, 30), server.output
    replacement = serving_pids(server)[-1]
    assert replacement not in (first, second)

    assert wait_until(lambda: ask(server.url, [replacement])[2] == replacement, 30, 0)
    assert statuses == [200] * 25
    assert alive(second) and not alive(first)


def test_metrics_add_up_over_every_process_whichever_answers(supervise: Supervise) -> None:
    server = supervise()
    pids = serving_pids(server)
    directory = metrics_dir(server)
    assert directory.is_dir()
    statuses = [submit(server.url, pids, f"m{n}")[0] for n in range(30)]
    statuses += [ask(server.url, pids, "POST", "/task", b"{oops")[0] for _ in range(4)]
    assert statuses == [200] * 30 + [400] * 4
    answered_by: set[int | None] = set()

    def scrape_adds_up() -> bool:
        status, text, pid = ask(server.url, pids, path="/metrics")
        assert status == 200
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text.decode())
            for s in family.samples
        }
        assert samples[("taskhub_requests_total", (("outcome", "admitted"),))] == 30
        assert samples[("taskhub_requests_total", (("outcome", "bad_request"),))] == 4
        assert samples[("taskhub_admission_seconds_count", ())] == 30
        assert samples[("taskhub_queue_jobs", (("state", "queued"),))] == 30
        answered_by.add(pid)
        return answered_by >= set(pids)

    assert wait_until(scrape_adds_up, 30, 0), f"only {answered_by} of {pids} answered"
    # A dead child's counts stay in the totals; its replacement counts on from there.
    os.kill(pids[0], signal.SIGKILL)
    assert wait_until(lambda: len(serving_pids(server)) == 3, 30), server.output
    pids = serving_pids(server)[1:]
    assert [submit(server.url, pids, f"n{n}")[0] for n in range(10)] == [200] * 10
    _, text, _ = ask(server.url, pids, path="/metrics")
    assert 'taskhub_requests_total{outcome="admitted"} 40.0' in text.decode()
    assert "python_info" not in text.decode()  # per-process metrics cannot be merged
    assert server.stop() == 0, server.output
    assert not directory.exists()


def test_a_bad_config_fails_once_with_exit_code_2(
    tmp_path: Path, ns: Namespace, redis_url: str
) -> None:
    config = config_dict(ns, redis_url)
    config["server"]["backlog"] = 0
    path = write_config(tmp_path, config)
    result = run_cli(["serve", str(path), "--workers", "3"], tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("server.backlog") == 1, result.stderr
    assert "server process" not in result.stderr


def refusing_plugins(directory: Path) -> str:
    plugins = directory / "plugins"
    plugins.mkdir()
    (plugins / "refuse.py").write_text(REFUSE_PLUGIN)
    return str(plugins)


def test_a_process_that_cannot_start_fails_once_and_no_other_is_started(
    tmp_path: Path, ns: Namespace, redis_url: str
) -> None:
    (tmp_path / "refuse.flag").touch()
    config = config_dict(ns, redis_url, plugins_dir=refusing_plugins(tmp_path))
    result = run_cli(["serve", str(write_config(tmp_path, config)), "--workers", "3"], tmp_path)
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("refuse.flag is here") == 1, result.stderr
    assert "while starting: giving up" in result.stderr
    assert "serving" not in result.stderr


@pytest.mark.servers("sanic")  # the supervisor's own logic: any server will do
def test_replacements_that_keep_dying_at_start_are_a_crash_loop(
    supervise: Supervise, tmp_path: Path
) -> None:
    server = supervise(plugins_dir=refusing_plugins(tmp_path))
    first, second = serving_pids(server)
    (tmp_path / "refuse.flag").touch()
    os.kill(first, signal.SIGKILL)
    assert server.wait(60) == 1, server.output
    assert server.output.count("refuse.flag is here") == 5, server.output
    assert "before serving, 5 replacements in a row: giving up" in server.output
    assert wait_until(lambda: not alive(second), 10)


def test_a_second_signal_stops_the_children_at_once(supervise: Supervise) -> None:
    server = supervise(server={**SERVER, "graceful_shutdown": 30})
    held = open_request(server.url, orjson.dumps({"user_id": "held"}))
    time.sleep(0.2)  # its child has read the headers: it would wait 30 s for the body
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    assert server.wait_for("stopping the server processes")
    server.proc.send_signal(signal.SIGTERM)
    assert server.wait(10) == 1, server.output
    assert time.monotonic() - started < 10
    assert "signal again: stopping the server processes now" in server.output
    assert not any(alive(pid) for pid in serving_pids(server))
    held.close()


def test_a_child_that_does_not_stop_is_killed_after_the_grace(supervise: Supervise) -> None:
    server = supervise(server={**SERVER, "graceful_shutdown": 0.5})
    stuck, other = serving_pids(server)
    os.kill(stuck, signal.SIGSTOP)
    server.proc.send_signal(signal.SIGTERM)
    assert server.wait(20) == 1, server.output
    assert f"server process {stuck} still runs after 5.5 s: killed" in server.output
    assert not alive(stuck) and not alive(other)


def test_a_signal_while_the_children_start_stops_them_cleanly(supervise: Supervise) -> None:
    server = supervise(count=2, wait=False)
    assert server.wait_for("metrics: multiprocess mode", 30), server.output
    server.proc.send_signal(signal.SIGTERM)  # the first child is still starting
    assert server.wait(30) == 0, server.output
    assert "Traceback" not in server.output
    assert not any(alive(pid) for pid in serving_pids(server))


def test_children_stop_when_the_supervisor_is_killed(supervise: Supervise) -> None:
    server = supervise()
    pids = serving_pids(server)
    server.kill()
    assert wait_until(lambda: not any(alive(pid) for pid in pids), 15), server.output
    assert server.wait_for("the supervisor closed the link")
    shutil.rmtree(metrics_dir(server))  # what a killed supervisor cannot remove


def test_a_server_plugin_that_cannot_share_its_socket_is_refused_workers(
    tmp_path: Path, ns: Namespace, redis_url: str
) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "lone.py").write_text(SERVER_PLUGIN)
    config = config_dict(ns, redis_url, plugins_dir=str(plugins), server={"type": "lone"})
    result = run_cli(["serve", str(write_config(tmp_path, config)), "--workers", "2"], tmp_path)
    assert result.returncode == 2, result.stderr
    assert "server 'lone' cannot share one listening socket among processes" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["serve", "{config}", "--workers", "0"], "0 is out of range: 1 to "),
        (["serve", "{config}", "--workers", "two"], "'two' is not a number of processes"),
        (["run", "{config}", "--workers", "2"], "`taskhub run` is one process by design"),
        (["serve", "{memory}", "--workers", "2"], "--workers 2 needs a Redis server"),
    ],
)
def test_workers_is_validated_with_a_precise_error(
    tmp_path: Path, ns: Namespace, redis_url: str, args: list[str], message: str
) -> None:
    paths = {
        "config": write_config(tmp_path, config_dict(ns, redis_url)),
        "memory": write_config(tmp_path, config_dict(ns, "memory://"), "memory.yaml"),
    }
    result = run_cli([arg.format(**paths) for arg in args], tmp_path)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
