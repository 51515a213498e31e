"""A local Redis Cluster: 3 masters and 3 replicas on loopback ports.

The tests start one per session, only when a test asks for it (the ``cluster``
fixture in conftest), and the scale row of the benchmark starts its own; it
lives here, beside the tests' other redis-servers, and bench imports it. A
short node timeout keeps a failover test quick. Every node keeps nothing on
disk, and the whole directory goes at the end. With ``tls`` every node speaks only
TLS, to clients and on the cluster bus (test_redis_tls.py's cluster).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import redis

from tests.support.processes import free_port, wait_until
from tests.support.redis_servers import go_down, pings, server_options
from tests.support.tls import TlsFiles, server_tls_options

NODE_TIMEOUT_MS = 1500
MASTERS = 3  # and, by default, one replica each
CREATE_TIMEOUT = 30.0


@dataclass
class Node:
    port: int
    bus_port: int
    directory: Path
    proc: subprocess.Popen[bytes] | None = None
    tls: TlsFiles | None = None
    host: str = "127.0.0.1"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://{self.address}"

    def client(self) -> redis.Redis:
        tls = {"ssl": True, "ssl_ca_certs": str(self.tls.ca)} if self.tls else {}
        return redis.Redis(self.host, self.port, socket_connect_timeout=1, socket_timeout=2, **tls)

    def info(self, section: str) -> dict[str, object]:
        with self.client() as client:
            return client.info(section)


@dataclass
class LocalCluster:
    """Six ``redis-server --cluster-enabled yes``, joined by ``redis-cli --cluster create``."""

    directory: Path
    nodes: list[Node] = field(default_factory=list)
    tls: TlsFiles | None = None

    @classmethod
    def start(
        cls,
        *,
        tls: TlsFiles | None = None,
        replicas: int = 1,
        host: str = "127.0.0.1",
        ports: list[int] | None = None,
    ) -> LocalCluster:
        """A new cluster; on another loopback ``host`` and given ``ports`` for one that
        stands in for a cluster that moved (its nodes' names now resolve elsewhere)."""
        binary, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        if binary is None or cli is None:
            raise FileNotFoundError("redis-server and redis-cli are needed for the test cluster")
        cluster = cls(Path(tempfile.mkdtemp(prefix="taskhub-cluster-")), tls=tls)
        try:
            size = MASTERS * (1 + replicas)
            cluster._spawn(binary, ports or [free_port() for _ in range(size)], host)
            addresses = [node.address for node in cluster.nodes]
            create = ["--cluster", "create", *addresses, "--cluster-replicas", str(replicas)]
            create += ["--cluster-yes", *(["--tls", "--cacert", str(tls.ca)] if tls else [])]
            subprocess.run(
                [cli, *create],
                check=True,
                capture_output=True,
                timeout=CREATE_TIMEOUT,
            )
            assert wait_until(cluster.healthy, CREATE_TIMEOUT, 0.05), "the cluster did not form"
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _spawn(self, binary: str, ports: list[int], host: str) -> None:
        for port in ports:
            node = Node(port, free_port(), self.directory / str(port), tls=self.tls, host=host)
            node.directory.mkdir()
            self._run(binary, node)
            self.nodes.append(node)
        for node in self.nodes:
            with node.client() as client:
                assert wait_until(lambda c=client: pings(c), 10), f"node {node.port} did not start"

    @staticmethod
    def _run(binary: str, node: Node) -> None:
        """Start ``node``'s redis-server; its ``nodes.conf`` says who it was, if anyone."""
        options = server_options(node.port, node.directory, host=node.host)
        options += ["--cluster-enabled", "yes", "--cluster-port", str(node.bus_port)]
        options += ["--cluster-config-file", "nodes.conf"]
        options += ["--cluster-node-timeout", str(NODE_TIMEOUT_MS)]
        if node.tls is not None:
            options += server_tls_options(node.tls, node.tls.server, client_certs=False)
            options += ["--tls-port", str(node.port), "--tls-cluster", "yes"]
            options += ["--tls-replication", "yes"]
        node.proc = subprocess.Popen(
            [binary, *options], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    # ------------------------------------------------------------------ inspection

    @property
    def url(self) -> str:
        """A seed URL (any live node will do: clients learn the rest from it)."""
        return self.urls[0]

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes if node.proc is not None]

    def healthy(self) -> bool:
        """Every live node says ``cluster_state:ok`` and every replica's link is up."""
        try:
            for node in self.nodes:
                if node.proc is None:
                    continue
                with node.client() as client:
                    if b"cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
                        return False
                replication = node.info("replication")
                if replication["role"] == "slave" and replication["master_link_status"] != "up":
                    return False
        except redis.RedisError:
            return False
        return True

    def node(self, port: int) -> Node:
        return next(node for node in self.nodes if node.port == port)

    def master_for_slot(self, slot: int) -> Node:
        """The master serving ``slot``, as a live node sees the cluster now."""
        live = next(node for node in self.nodes if node.proc is not None)
        with live.client() as client:
            for start, end, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    return self.node(int(master[1]))
        raise LookupError(f"no master serves slot {slot}")

    def master_for_key(self, key: str) -> Node:
        return self.master_for_slot(redis.crc.key_slot(key.encode()))

    def replica_of(self, master: Node) -> Node:
        for node in self.nodes:
            if node.proc is not None and node is not master:
                replication = node.info("replication")
                if replication["role"] == "slave" and replication["master_port"] == master.port:
                    return node
        raise LookupError(f"master {master.port} has no replica")

    # ------------------------------------------------------------------ faults

    def kill(self, node: Node) -> None:
        """SIGKILL one node: it gets no chance to tell the others."""
        if node.proc is not None:
            node.proc.kill()
            node.proc.wait(10)
            node.proc = None

    def revive(self, node: Node, timeout: float = 30.0) -> None:
        """Start a killed node again with its own ``nodes.conf``: it rejoins, finds its
        slots taken over by its promoted replica, and becomes that node's replica. Waits
        until the whole cluster is healthy again, for the tests that come after."""
        binary = shutil.which("redis-server")
        assert binary is not None and node.proc is None
        self._run(binary, node)

        def rejoined() -> bool:
            try:
                return node.info("replication")["role"] == "slave" and self.healthy()
            except redis.RedisError:
                return False

        assert wait_until(rejoined, timeout, 0.05), f"node {node.port} did not rejoin"

    def go_down(self, *, keep_data: bool) -> None:
        """Every node SIGKILLed at once (a whole-cluster outage); ``keep_data``: each SAVEs
        first and loads it back on restart, else they come back empty. ``nodes.conf`` stays:
        the nodes return on the same addresses with the same slots."""
        live = [node for node in self.nodes if node.proc is not None]
        clients = [node.client for node in live]
        directories = [node.directory for node in live]

        def kill_all() -> None:
            for node in live:
                self.kill(node)

        go_down(clients, directories, kill_all, keep_data=keep_data)

    def come_back(self, timeout: float = 30.0) -> None:
        """Start every killed node again; waits until the cluster is healthy (state ok)."""
        binary = shutil.which("redis-server")
        assert binary is not None
        for node in self.nodes:
            if node.proc is None:
                self._run(binary, node)
        assert wait_until(self.healthy, timeout, 0.05), "the cluster did not come back"

    def promote(self, replica: Node, *, force: bool = False) -> None:
        """``CLUSTER FAILOVER`` on a replica; ``force`` when its master is dead (TAKEOVER:
        no vote needed, so it is done at once). Waits until the replica serves as master."""
        with replica.client() as client:
            client.execute_command("CLUSTER", "FAILOVER", *(["TAKEOVER"] if force else []))
        assert wait_until(lambda: replica.info("replication")["role"] == "master", 10)

    def stop(self) -> None:
        for node in self.nodes:
            self.kill(node)
        shutil.rmtree(self.directory, ignore_errors=True)
