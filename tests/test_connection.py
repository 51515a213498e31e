"""Connection settings: one model, read from the URL as redis-py reads it, for every connection.

These need no Redis: parsing, the load-time errors, and that each kind of connection is
built from the model.
"""

from __future__ import annotations

import inspect
import ssl
from pathlib import Path

import pytest
from redis.asyncio.connection import SSLConnection

from taskhub.config.models import RedisSettings
from taskhub.config.secrets import mask_url
from taskhub.store.clients import connect
from taskhub.store.cluster_client import ClusterClient
from taskhub.store.connection import (
    InvalidConnection,
    PreparedSSLConnection,
    TlsSettings,
    connection_settings,
)
from tests.support.configs import write_config
from tests.test_config import errors_of, hub_from


def read(url: str, **redis: object) -> object:
    return connection_settings(RedisSettings(url=url, **redis))  # type: ignore[arg-type]


def test_tls_defaults_are_redis_pys_own() -> None:
    defaults = inspect.signature(SSLConnection.__init__).parameters
    tls = TlsSettings()
    assert tls.cert_reqs == defaults["ssl_cert_reqs"].default
    assert tls.check_hostname == defaults["ssl_check_hostname"].default


def test_a_plain_url() -> None:
    settings = connection_settings(RedisSettings(url="redis://h:7000/3", socket_timeout=1.5))
    assert settings is not None
    assert (settings.host, settings.port, settings.db, settings.tls) == ("h", 7000, 3, None)
    assert (settings.socket_timeout, settings.connect_timeout, settings.keepalive) == (1.5, 2, True)
    assert connection_settings(RedisSettings(url="memory://")) is None


def test_url_arguments_are_read_as_redis_py_reads_them() -> None:
    url = (
        "rediss://alice:s%40cret@h:6380?db=2&ssl_cert_reqs=optional&ssl_check_hostname=no"
        "&socket_timeout=4&socket_keepalive=false"
    )
    settings = connection_settings(RedisSettings(url=url))
    assert settings is not None and settings.tls is not None
    assert (settings.username, settings.password, settings.db) == ("alice", "s@cret", 2)
    assert (settings.tls.cert_reqs, settings.tls.check_hostname) == ("optional", False)
    assert isinstance(settings.tls.context, ssl.SSLContext)
    assert settings.tls.context.verify_mode is ssl.CERT_OPTIONAL
    assert (settings.socket_timeout, settings.keepalive) == (4.0, False)


def test_no_verification_means_no_hostname_check_as_in_redis_py() -> None:
    settings = connection_settings(RedisSettings(url="rediss://h?ssl_cert_reqs=none"))
    assert settings is not None and settings.tls is not None and settings.tls.context
    assert settings.tls.check_hostname is False
    assert settings.tls.context.verify_mode is ssl.CERT_NONE


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("rediss://h?ssl_cert_reqs=maybe", "ssl_cert_reqs='maybe' is not one of none, optional"),
        ("rediss://h?ssl_ca_certs=/nowhere/ca.crt", "ssl_ca_certs=/nowhere/ca.crt: no such file"),
        ("rediss://h?ssl_certfile=/nowhere/c.crt", "ssl_certfile=/nowhere/c.crt: no such file"),
        ("rediss://h?ssl_keyfile=/k.pem", "ssl_keyfile needs ssl_certfile"),
        ("rediss://h?ssl_ca_path=/nowhere", "ssl_ca_path=/nowhere: no such directory"),
        ("redis://h?ssl_ca_certs=/x", "ssl_ca_certs is for TLS: use rediss://"),
        ("redis://h?protocol=3", "unknown URL argument 'protocol'; taskhub supports db, username"),
        ("redis://h?db=x", "Invalid value for 'db'"),
        ("redis://h?socket_timeout=0", "socket_timeout=0 must be over 0"),
    ],
)
def test_what_redis_py_would_fail_on_at_connect_time_fails_now(url: str, message: str) -> None:
    with pytest.raises(InvalidConnection) as caught:
        read(url)
    assert message in str(caught.value)


def test_a_file_that_is_no_certificate(tmp_path: Path) -> None:
    junk = tmp_path / "ca.crt"
    junk.write_text("not a certificate\n")
    with pytest.raises(InvalidConnection, match=f"ssl_ca_certs={junk}: not usable for TLS"):
        read(f"rediss://h?ssl_ca_certs={junk}")


def test_bad_urls_are_config_errors_naming_the_key_and_line(tmp_path: Path) -> None:
    text = (
        "redis:\n  url: rediss://h?ssl_cert_reqs=maybe\n"
        "limits:\n  redis_url: rediss://h?ssl_ca_certs=/nowhere/ca.crt\n"
    )
    error = str(errors_of(tmp_path, text))
    assert "line 2: redis.url: ssl_cert_reqs='maybe' is not one of none, optional, required" in (
        error
    )
    assert "line 4: limits.redis_url: ssl_ca_certs=/nowhere/ca.crt: no such file" in error


def test_taskhub_check_exits_2_with_the_problem_not_a_traceback(tmp_path: Path, capsys) -> None:
    from taskhub.cli.main import main  # noqa: PLC0415

    path = write_config(tmp_path, {"redis": {"url": "rediss://h:1?ssl_cert_reqs=yes"}})
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err
    assert "redis.url: ssl_cert_reqs='yes' is not one of none, optional, required" in err
    assert "Traceback" not in err


def test_check_shows_each_redis_connection_with_secrets_masked(tmp_path: Path, capsys) -> None:
    from taskhub.cli.main import main  # noqa: PLC0415

    redis = {"url": "rediss://bob:pw-123@h:6380/1?ssl_cert_reqs=none", "socket_timeout": 1.5}
    limits = {"redis_url": "redis://:pw-456@l:6379/2?socket_timeout=3", "fail_mode": "open"}
    path = write_config(tmp_path, {"redis": redis, "limits": limits})
    assert main(["check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "pw-123" not in out and "pw-456" not in out
    import yaml  # noqa: PLC0415

    _, shown = yaml.safe_load_all(out)
    assert shown["connections"]["redis.url"] == {
        "scheme": "rediss",
        "host": "h",
        "port": 6380,
        "db": 1,
        "tls": {"verify": "none", "check_hostname": False},
        "username": "bob",
        "password": "***",
        "connect_timeout": 2.0,
        "socket_timeout": 1.5,
        "keepalive": True,
    }
    limiter = shown["connections"]["limits.redis_url"]
    assert (limiter["tls"], limiter["username"], limiter["password"]) == ("off", "default", "***")
    assert limiter["socket_timeout"] == 3.0


def test_url_argument_secrets_are_masked() -> None:
    url = "rediss://u:pw@h:1/0?ssl_ca_certs=/a&ssl_password=key-pw&password=x"
    assert mask_url(url) == "rediss://u:***@h:1/0?ssl_ca_certs=/a&ssl_password=***&password=***"
    assert mask_url("unix:///run/redis.sock?password=x&db=2") == (
        "unix:///run/redis.sock?password=***&db=2"
    )


async def test_redis_py_clients_use_the_context_built_at_load() -> None:
    settings = connection_settings(RedisSettings(url="rediss://h:6380/0?ssl_cert_reqs=none"))
    assert settings is not None and settings.tls is not None
    client = connect(settings)
    connection = client.connection_pool.make_connection()
    assert isinstance(connection, PreparedSSLConnection)
    assert connection.ssl_context.get() is settings.tls.context
    await client.aclose()


async def test_the_cluster_client_uses_the_context_built_at_load(tmp_path: Path) -> None:
    hub = hub_from(
        tmp_path,
        "redis: {cluster: true, url: 'rediss://a:7000?ssl_cert_reqs=none', nodes: ['rediss://b:7001']}\n",
    )
    endpoint = hub.connections.endpoints.redis
    assert endpoint is not None and endpoint.tls is not None
    client = hub.connections.connect()
    assert isinstance(client, ClusterClient)
    startup = list(client.nodes_manager.startup_nodes.values())
    assert [node.name for node in startup] == ["a:7000", "b:7001"]
    for node in startup:
        connection = node.acquire_connection()
        assert isinstance(connection, PreparedSSLConnection)
        assert connection.ssl_context.get() is endpoint.tls.context
    later = client.nodes_manager.connection_kwargs
    assert later["connection_class"] is PreparedSSLConnection
    await client.aclose()


def test_every_url_argument_is_documented() -> None:
    from taskhub.store.connection import URL_ARGUMENTS  # noqa: PLC0415
    from tests.support.configs import ROOT  # noqa: PLC0415

    page = (ROOT / "docs" / "redis.md").read_text()
    for name in URL_ARGUMENTS:
        assert f"`{name}`" in page, name


async def test_the_cluster_client_connects_to_a_localhost_seed_by_its_name(tmp_path: Path) -> None:
    """redis-py looks ``localhost`` up once, when it builds a node; a seed keeps the name,
    looked up again on each connect (a store back at a new address is found)."""
    hub = hub_from(
        tmp_path,
        "redis: {cluster: true, url: 'redis://localhost:7000', nodes: ['redis://b:7001']}\n",
    )
    client = hub.connections.connect()
    assert isinstance(client, ClusterClient)
    startup = list(client.nodes_manager.startup_nodes.values())
    assert [(node.host, node.port) for node in startup] == [("localhost", 7000), ("b", 7001)]
    assert startup[0].acquire_connection().host == "localhost"
    await client.aclose()
