"""TLS on real redis-servers: a private CA, ``ssl_cert_reqs=none`` with a self-signed
certificate, mutual TLS, and a Redis Cluster over TLS.

Each good case runs the end-to-end path (``taskhub run``: POST /task answers 200,
the worker runs the job, /ready answers 200); each bad one fails clearly: 503 on
POST /task and not ready on /ready, never ready while admissions fail. The first
test is the bug this was written for: the admission pipeline built a default SSL
context of its own, ignoring ``?ssl_ca_certs=``, and answered 503 to every POST while
/ready (redis-py) said ready and the worker ran.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.cluster import LocalCluster
from tests.support.configs import config_dict
from tests.support.end_to_end import end_to_end as run_end_to_end
from tests.support.namespaces import Namespace
from tests.support.processes import TaskhubProcess
from tests.support.tls import TlsFiles, TlsRedis, self_signed

# Private TLS redis-servers, started here; the connection is the matter, so one server.
pytestmark = [pytest.mark.redis, pytest.mark.servers("sanic")]

Spawn = Callable[..., TaskhubProcess]


@pytest.fixture
def tls(tmp_path: Path) -> TlsFiles:
    return TlsFiles.make(tmp_path / "pki")


@pytest.fixture
def servers() -> Iterator[Callable[..., TlsRedis]]:
    """Start TLS redis-servers; stop them all after the test."""
    started: list[TlsRedis] = []

    def start(directory: Path, tls: TlsFiles, **options: object) -> TlsRedis:
        directory.mkdir(parents=True, exist_ok=True)
        server = TlsRedis(directory, tls, **options)  # type: ignore[arg-type]
        started.append(server.start())  # type: ignore[arg-type]
        return server

    yield start
    for server in started:
        server.stop()


def end_to_end(spawn: Spawn, directory: Path, url: str, **redis: object) -> TaskhubProcess:
    config = config_dict(Namespace.new(), url)
    config["redis"].update(redis)
    return run_end_to_end(spawn, directory, config)


def refused(spawn: Spawn, directory: Path, url: str, why: str) -> None:
    """``taskhub serve`` starts, but answers 503 to POST /task and is not ready, both at
    once (the same connection), and the log says why."""
    process = spawn(config_dict(Namespace.new(), url), command="serve", cwd=directory)
    response = httpx.post(f"{process.url}/task", json={"user_id": "alice"}, timeout=10)
    assert response.status_code == 503, response.text
    ready = httpx.get(f"{process.url}/ready", timeout=10)
    assert ready.status_code == 503, ready.text
    assert ready.json()["checks"]["redis"] == "unavailable"
    assert process.wait_for(why, 5), process.output
    assert "Traceback" not in process.output


def test_a_private_ca_in_the_url_is_used_by_admissions_too(
    tmp_path: Path, tls: TlsFiles, servers, spawn: Spawn
) -> None:
    server = servers(tmp_path / "redis", tls)
    end_to_end(spawn, tmp_path / "run", server.tls_url(ssl_ca_certs=str(tls.ca)))


def test_no_verification_for_a_self_signed_certificate(
    tmp_path: Path, tls: TlsFiles, servers, spawn: Spawn
) -> None:
    server = servers(tmp_path / "redis", tls, server=self_signed(tmp_path / "pki"))
    end_to_end(spawn, tmp_path / "run", server.tls_url(ssl_cert_reqs="none"))


def test_a_certificate_from_another_ca_is_refused_on_post_and_on_ready(
    tmp_path: Path, tls: TlsFiles, servers, spawn: Spawn
) -> None:
    server = servers(tmp_path / "redis", tls)
    other = TlsFiles.make(tmp_path / "other-pki", "other")
    url = server.tls_url(ssl_ca_certs=str(other.ca))
    refused(spawn, tmp_path / "serve", url, "CERTIFICATE_VERIFY_FAILED")


def test_a_self_signed_certificate_is_refused_unless_told_not_to_verify(
    tmp_path: Path, tls: TlsFiles, servers, spawn: Spawn
) -> None:
    server = servers(tmp_path / "redis", tls, server=self_signed(tmp_path / "pki"))
    refused(spawn, tmp_path / "serve", server.tls_url(), "CERTIFICATE_VERIFY_FAILED")


def test_mutual_tls(tmp_path: Path, tls: TlsFiles, servers, spawn: Spawn) -> None:
    server = servers(tmp_path / "redis", tls, client_certs=True)
    url = server.tls_url(
        ssl_ca_certs=str(tls.ca), ssl_certfile=str(tls.client.cert), ssl_keyfile=str(tls.client.key)
    )
    end_to_end(spawn, tmp_path / "run", url)
    # Without a client certificate the server hangs up during the handshake.
    refused(spawn, tmp_path / "serve", server.tls_url(ssl_ca_certs=str(tls.ca)), "unreachable")


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Three masters that speak only TLS, to clients and to each other."""
    tls = TlsFiles.make(tmp_path_factory.mktemp("cluster-pki"))
    cluster = LocalCluster.start(tls=tls, replicas=0)
    yield cluster
    cluster.stop()


def test_a_redis_cluster_over_tls(tmp_path: Path, tls_cluster: LocalCluster, spawn: Spawn) -> None:
    assert tls_cluster.tls is not None
    seed, *others = tls_cluster.urls
    url = f"{seed}?ssl_ca_certs={tls_cluster.tls.ca}"
    end_to_end(spawn, tmp_path / "run", url, cluster=True, nodes=others)
