"""A local Redis Sentinel setup: 1 master, 1 replica and 3 sentinels on loopback ports.

Everything lives in a temporary directory (the sentinels rewrite their config
files there) and keeps nothing on disk; ``stop`` ends every process it started
and removes the directory. The master, and so the replica, needs a password,
and the sentinels one of their own, so that a test shows each is reached with its
own login. Short ``down-after-milliseconds`` and ``failover-timeout`` keep a
failover test quick: a killed master is replaced in about 2 s, nothing forced.
With ``tls``, each sentinel also serves clients over TLS on a port of its own (the
sentinels keep talking to each other, and to the servers, in plaintext).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import redis

from tests.support.processes import free_port, wait_until
from tests.support.redis_servers import PrivateRedis, pings
from tests.support.tls import TlsFiles

SERVICE = "taskhub-test"
MASTER_PASSWORD = "master-pw-1"
SENTINEL_PASSWORD = "sentinel-pw-2"
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 3000
QUORUM = 2
START_TIMEOUT = 30.0


class ReplicatedRedis(PrivateRedis):
    """A password-protected redis-server that can replicate; after a failover the old
    master, started again, would follow the new one with the same password."""

    def __init__(self, directory: Path, master_port: int | None = None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        super().__init__(directory, password=MASTER_PASSWORD)
        self.master_port = master_port

    def options(self) -> list[str]:
        options = [*super().options(), "--masterauth", MASTER_PASSWORD]
        if self.master_port is not None:
            options += ["--replicaof", "127.0.0.1", str(self.master_port)]
        return options

    def role(self) -> str | None:
        """``master`` or ``slave`` as the server says now; None when it does not answer."""
        client = self.client()
        try:
            return str(client.info("replication")["role"])
        except redis.RedisError:
            return None
        finally:
            client.close()


@dataclass
class SentinelProcess:
    port: int
    config: Path
    proc: subprocess.Popen[bytes] | None = None
    tls_port: int | None = None

    @property
    def url(self) -> str:
        return f"redis://:{SENTINEL_PASSWORD}@127.0.0.1:{self.port}"

    def tls_url(self, ca: Path) -> str:
        assert self.tls_port is not None, "started without tls"
        return f"rediss://:{SENTINEL_PASSWORD}@127.0.0.1:{self.tls_port}?ssl_ca_certs={ca}"

    def client(self) -> redis.Redis:
        return redis.Redis(
            port=self.port, password=SENTINEL_PASSWORD, socket_connect_timeout=1, socket_timeout=2
        )


@dataclass
class LocalSentinels:
    """The servers (the master first, at the start) and the sentinels watching them."""

    directory: Path
    servers: list[ReplicatedRedis] = field(default_factory=list)
    sentinels: list[SentinelProcess] = field(default_factory=list)

    @classmethod
    def start(cls, tls: TlsFiles | None = None) -> LocalSentinels:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server is needed for the test sentinels")
        group = cls(Path(tempfile.mkdtemp(prefix="taskhub-sentinel-")))
        try:
            master = ReplicatedRedis(group.directory / "master").start()
            group.servers.append(master)
            group.servers.append(ReplicatedRedis(group.directory / "replica", master.port).start())
            for index in range(3):
                group.sentinels.append(group._sentinel(binary, index, master.port, tls))
            assert wait_until(group.healthy, START_TIMEOUT, 0.05), "the sentinels did not settle"
        except BaseException:
            group.stop()
            raise
        return group

    def _sentinel(
        self, binary: str, index: int, master_port: int, tls: TlsFiles | None
    ) -> SentinelProcess:
        port = free_port()
        tls_port = free_port() if tls is not None else None
        config = self.directory / f"sentinel-{index}.conf"
        tls_lines = ""
        if tls is not None:
            tls_lines = (
                f"tls-port {tls_port}\ntls-cert-file {tls.server.cert}\n"
                f"tls-key-file {tls.server.key}\ntls-ca-cert-file {tls.ca}\n"
                "tls-auth-clients no\n"
            )
        config.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {self.directory}\n{tls_lines}"
            f"requirepass {SENTINEL_PASSWORD}\nsentinel sentinel-pass {SENTINEL_PASSWORD}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {master_port} {QUORUM}\n"
            f"sentinel auth-pass {SERVICE} {MASTER_PASSWORD}\n"
            f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}\n"
        )
        sentinel = SentinelProcess(port, config, tls_port=tls_port)
        sentinel.proc = subprocess.Popen(
            [binary, str(config), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        with sentinel.client() as client:
            assert wait_until(lambda: pings(client), 10), f"sentinel {port} did not start"
        return sentinel

    # ------------------------------------------------------------------ inspection

    @property
    def sentinel_urls(self) -> list[str]:
        return [sentinel.url for sentinel in self.sentinels]

    def master_url(self, db: int = 0) -> str:
        """``redis.url`` for taskhub: the master's login and db; the host is the service's
        name, since the sentinels give the address."""
        return f"redis://:{MASTER_PASSWORD}@{SERVICE}/{db}"

    def master(self) -> ReplicatedRedis:
        """The server the sentinels name master now."""
        with self.sentinels[0].client() as client:
            _, port = client.sentinel_get_master_addr_by_name(SERVICE)
        return next(server for server in self.servers if server.port == int(port))

    def replica_of(self, master: ReplicatedRedis) -> ReplicatedRedis:
        return next(server for server in self.servers if server is not master)

    def healthy(self) -> bool:
        """Every sentinel sees the master up, its replica, and the two other sentinels;
        the replica's link is up."""
        try:
            for sentinel in self.sentinels:
                with sentinel.client() as client:
                    state = client.sentinel_master(SERVICE)
                if state["flags"] != "master" or state["num-slaves"] < 1:
                    return False
                if state["num-other-sentinels"] < len(self.sentinels) - 1:
                    return False
            replica = self.replica_of(self.master())
            with replica.client() as client:
                return bool(client.info("replication")["master_link_status"] == "up")
        except (redis.RedisError, StopIteration):
            return False

    # ------------------------------------------------------------------ faults

    @staticmethod
    def kill(server: ReplicatedRedis) -> None:
        """SIGKILL: the master gets no chance to tell anyone."""
        server.kill()

    def stop(self) -> None:
        for sentinel in self.sentinels:
            if sentinel.proc is not None:
                sentinel.proc.kill()
                sentinel.proc.wait(10)
                sentinel.proc = None
        for server in self.servers:
            server.kill()
        shutil.rmtree(self.directory, ignore_errors=True)
