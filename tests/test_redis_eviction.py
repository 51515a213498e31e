"""Every Redis taskhub uses must keep what it is given: its eviction policy is read at
start-up and by ``taskhub check`` (every master of a cluster, the limiter's own Redis),
and on a cluster the queue's shards must reach every master. Private redis-servers and
the local cluster, started here; the shared Redis is never reconfigured."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.support.cluster import LocalCluster
from tests.support.configs import config_dict, write_config
from tests.support.namespaces import Namespace
from tests.support.processes import TaskhubProcess, run_cli
from tests.support.redis_servers import PrivateRedis

# Start-up is the same code whatever the server: one is enough.
pytestmark = [pytest.mark.redis, pytest.mark.servers("sanic")]

Servers = Callable[..., PrivateRedis]
FIX = "CONFIG SET maxmemory-policy noeviction"


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    """Start private redis-servers with extra options; each is stopped afterwards."""
    started: list[PrivateRedis] = []

    def start(*args: str, password: str = "") -> PrivateRedis:
        directory = tmp_path / f"redis-{len(started)}"
        directory.mkdir()
        server = PrivateRedis(directory, password=password, args=args)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


def check(tmp_path: Path, config: dict[str, Any]) -> tuple[int, str]:
    """``taskhub check`` on ``config``: its exit code and what it said on stderr."""
    result = run_cli(["check", str(write_config(tmp_path, config))], tmp_path)
    return result.returncode, result.stderr


def refused(spawn: Callable[..., TaskhubProcess], config: dict[str, Any]) -> TaskhubProcess:
    """``taskhub run`` that is expected to stop by itself before it serves."""
    process = spawn(config, wait_for="")
    process.wait(20)
    return process


def test_an_evicting_redis_is_named_with_what_it_can_lose_and_the_fix(
    tmp_path: Path, servers: Servers, spawn
) -> None:
    server = servers("--maxmemory-policy", "allkeys-lru")
    config = config_dict(Namespace.new(), server.url)
    named = (
        f"maxmemory-policy is allkeys-lru on 127.0.0.1:{server.port} (redis.url), not noeviction"
    )
    process = spawn(config)
    warning = process.wait_for(named)
    assert warning is not None and "WARNING" in warning, process.output
    for loss in ("queued jobs", "job state", "limiter state", "admitted over their limits"):
        assert loss in warning, warning
    assert FIX in warning and "redis.eviction: error" in warning
    code, said = check(tmp_path, config)
    assert code == 0, said
    assert named in said and FIX in said


def test_noeviction_is_quiet(tmp_path: Path, servers: Servers) -> None:
    server = servers("--maxmemory-policy", "noeviction")
    code, said = check(tmp_path, config_dict(Namespace.new(), server.url))
    assert code == 0, said
    assert f"redis.url: maxmemory-policy: 127.0.0.1:{server.port} noeviction" in said
    assert "WARNING" not in said, said


def test_eviction_error_refuses_to_start_and_check_exits_2(
    tmp_path: Path, servers: Servers, spawn
) -> None:
    server = servers("--maxmemory-policy", "volatile-lru")
    config = config_dict(Namespace.new(), server.url)
    config["redis"]["eviction"] = "error"
    process = refused(spawn, config)
    assert process.proc is not None and process.proc.returncode == 2, process.output
    assert "listening on" not in process.output
    expected = "redis.eviction: maxmemory-policy is volatile-lru on 127.0.0.1:"
    assert expected in process.output and "Traceback" not in process.output
    assert "redis.eviction: warn to start anyway" in process.output
    # volatile-* evicts only keys with a TTL: limiter keys and finished jobs, never queued ones
    assert "limiter state" in process.output and "finished jobs" in process.output
    assert "queued jobs" not in process.output
    code, said = check(tmp_path, config)
    assert code == 2 and expected in said, said


def test_serve_with_workers_checks_once_for_all_its_processes(
    tmp_path: Path, servers: Servers
) -> None:
    """The supervisor of ``serve --workers N`` checks before it binds, and its children
    do not check again: one warning, not N + 1; a refused policy stops it before any
    child starts, with the config error and exit code 2."""
    server = servers("--maxmemory-policy", "allkeys-lru")
    config = config_dict(Namespace.new(), server.url)
    config["server"].update(host="127.0.0.1", port=0)
    path = write_config(tmp_path, config)
    process = TaskhubProcess(["serve", str(path), "--workers", "2"], cwd=tmp_path)
    try:
        process.start("server processes serving", timeout=60)
        named = f"maxmemory-policy is allkeys-lru on 127.0.0.1:{server.port} (redis.url)"
        assert process.output.count(named) == 1, process.output
        assert process.output.count("redis.url: maxmemory-policy: ") == 1, process.output
    finally:
        process.stop()
    config["redis"]["eviction"] = "error"
    args = ["serve", str(write_config(tmp_path, config)), "--workers", "2"]
    refused = TaskhubProcess(args, cwd=tmp_path)
    assert refused.start(None).wait(30) == 2, refused.output
    assert "redis.eviction: maxmemory-policy is allkeys-lru" in refused.output
    assert "server process" not in refused.output and "Traceback" not in refused.output


def test_info_is_enough_where_config_is_disabled(tmp_path: Path, servers: Servers) -> None:
    """Managed services often disable CONFIG; INFO still says the policy."""
    server = servers("--maxmemory-policy", "allkeys-random", "--rename-command", "CONFIG", "")
    code, said = check(tmp_path, config_dict(Namespace.new(), server.url))
    assert code == 0, said
    assert f"maxmemory-policy is allkeys-random on 127.0.0.1:{server.port}" in said, said


def test_a_policy_that_cannot_be_read_is_a_warning_even_with_error(
    tmp_path: Path, servers: Servers, spawn
) -> None:
    hidden = ["--rename-command", "CONFIG", "", "--rename-command", "INFO", ""]
    server = servers("--maxmemory-policy", "allkeys-lru", *hidden)
    config = config_dict(Namespace.new(), server.url)
    config["redis"]["eviction"] = "error"
    process = spawn(config)  # it starts: only a policy it could read is refused
    line = process.wait_for(f"the eviction policy of 127.0.0.1:{server.port} could not be checked")
    assert line is not None and "WARNING" in line, process.output
    assert "unknown command 'INFO'" in line and "unknown command 'CONFIG'" in line
    assert "Make sure its maxmemory-policy is noeviction" in line
    assert "refuses only a policy it could read" in line
    code, said = check(tmp_path, config)
    assert code == 0 and "could not be checked" in said, said


def test_an_acl_user_without_info_and_config_gets_could_not_be_checked(
    tmp_path: Path, servers: Servers
) -> None:
    server = servers("--maxmemory-policy", "allkeys-lru")
    with server.client() as admin:
        admin.execute_command("ACL", "SETUSER", "plain", "on", ">pw-12345", "~*", "+@all")
        admin.execute_command("ACL", "SETUSER", "plain", "-info", "-config")
    url = f"redis://plain:pw-12345@127.0.0.1:{server.port}/0"
    code, said = check(tmp_path, config_dict(Namespace.new(), url))
    assert code == 0, said
    assert "could not be checked" in said and "NOPERM" in said, said
    assert "pw-12345" not in said


def test_the_limiters_own_redis_is_checked_for_what_it_holds(
    tmp_path: Path, servers: Servers
) -> None:
    queue = servers("--maxmemory-policy", "noeviction")
    limiter = servers("--maxmemory-policy", "volatile-ttl")
    config = config_dict(Namespace.new(), queue.url, limits={"redis_url": limiter.url})
    code, said = check(tmp_path, config)
    assert code == 0, said
    (line,) = [line for line in said.splitlines() if "volatile-ttl" in line and "WARNING" in line]
    assert f"on 127.0.0.1:{limiter.port} (limits.redis_url)" in line
    assert "limiter state" in line and "queued jobs" not in line
    assert f"redis.url: maxmemory-policy: 127.0.0.1:{queue.port} noeviction" in said


# --------------------------------------------------------------------------- the cluster


def masters(cluster: LocalCluster) -> list[int]:
    return sorted(
        node.port
        for node in cluster.nodes
        if node.proc is not None and node.info("replication")["role"] == "master"
    )


@pytest.fixture
def evicting_master(cluster: LocalCluster) -> Iterator[int]:
    """One master of the test cluster set to allkeys-lru (the test's own cluster, not the
    shared Redis); set back afterwards."""
    port = masters(cluster)[-1]
    with redis.Redis(port=port) as node:
        before = node.config_get("maxmemory-policy")["maxmemory-policy"]
        node.config_set("maxmemory-policy", "allkeys-lru")
    yield port
    with redis.Redis(port=port) as node:
        node.config_set("maxmemory-policy", before)


def test_every_master_of_a_cluster_is_checked_and_one_shard_is_named(
    tmp_path: Path, cluster: LocalCluster, evicting_master: int, spawn
) -> None:
    ns = Namespace.new()
    config = config_dict(ns, cluster.url)
    config["redis"]["cluster"] = True  # queue.shards left unset
    code, said = check(tmp_path, config)
    assert code == 0, said
    evicting = f"maxmemory-policy is allkeys-lru on 127.0.0.1:{evicting_master} (redis.url)"
    assert evicting in said, said
    assert said.count("not noeviction") == 1, said  # the other masters are fine
    (spread,) = [line for line in said.splitlines() if "queue.shards is 1" in line]
    assert "on a Redis Cluster of 3 masters" in spread
    home = cluster.master_for_key(f"{{{ns.queue}.0}}").port
    idle = [port for port in masters(cluster) if port != home]
    assert f"is on 127.0.0.1:{home};" in spread, spread
    assert all(f"127.0.0.1:{port}" in spread.split(";")[1] for port in idle), spread
    assert "e.g. 6" in spread and "while the queue is empty" in spread
    process = spawn(config, command="serve")  # start-up says the same
    assert process.wait_for(evicting) and process.wait_for(spread.split(" taskhub: ")[1])


def test_shards_over_every_master_are_quiet(tmp_path: Path, cluster: LocalCluster) -> None:
    ns = Namespace.new()
    config = config_dict(ns, cluster.url)
    config["redis"]["cluster"] = True
    config["queue"]["shards"] = 6
    code, said = check(tmp_path, config)
    assert code == 0, said
    (line,) = [line for line in said.splitlines() if "queue shards per master: " in line]
    shown = sorted(line.split("queue shards per master: ")[1].split(", "))
    assert shown == [f"127.0.0.1:{port} 2" for port in masters(cluster)], line
    assert "WARNING" not in said, said
