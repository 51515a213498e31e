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


SENTINEL = (
    "redis:\n"
    "  url: rediss://app:master-pw@mymaster/2?ssl_cert_reqs=none\n"
    "  sentinel:\n"
    "    service: mymaster\n"
    "    nodes:\n"
    "      - redis://:sentinel-pw@s1:26379\n"
    "      - rediss://watcher:other-pw@s2:26380?ssl_cert_reqs=none&socket_timeout=0.5\n"
)


def test_sentinel_nodes_have_their_own_login_and_tls_the_master_the_urls(tmp_path: Path) -> None:
    hub = hub_from(tmp_path, SENTINEL)
    settings = hub.connections.endpoints.redis
    assert settings is not None and settings.sentinels is not None and settings.tls is not None
    assert (settings.username, settings.password, settings.db) == ("app", "master-pw", 2)
    assert settings.sentinels.service == "mymaster"
    first, second = settings.sentinels.nodes
    assert (first.address, first.password, first.tls) == (("s1", 26379), "sentinel-pw", None)
    assert (second.address, second.username, second.password) == (
        ("s2", 26380),
        "watcher",
        "other-pw",
    )
    assert second.tls is not None and second.socket_timeout == 0.5
    master = settings.at(("10.0.0.9", 6390))  # where the pipeline goes once told
    assert (master.address, master.password, master.db, master.sentinels) == (
        ("10.0.0.9", 6390),
        "master-pw",
        2,
        None,
    )


def test_check_shows_the_sentinels_with_every_password_masked(tmp_path: Path, capsys) -> None:
    from taskhub.cli.main import main  # noqa: PLC0415

    path = tmp_path / "config.yaml"
    path.write_text(SENTINEL)
    assert main(["check", str(path)]) == 0
    out = capsys.readouterr().out
    for secret in ("master-pw", "sentinel-pw", "other-pw"):
        assert secret not in out
    import yaml  # noqa: PLC0415

    resolved, shown = yaml.safe_load_all(out)
    assert resolved["redis"]["sentinel"]["nodes"][0] == "redis://:***@s1:26379"
    redis = shown["connections"]["redis.url"]
    assert redis["master"].startswith("the one the sentinels name")
    assert (redis["db"], redis["username"], redis["password"]) == (2, "app", "***")
    assert redis["tls"] == {"verify": "none", "check_hostname": False}
    assert redis["sentinel"] == {
        "service": "mymaster",
        "nodes": [
            {
                "scheme": "redis",
                "host": "s1",
                "port": 26379,
                "tls": "off",
                "username": "default",
                "password": "***",
                "connect_timeout": 2.0,
                "socket_timeout": 2.0,
                "keepalive": True,
            },
            {
                "scheme": "rediss",
                "host": "s2",
                "port": 26380,
                "tls": {"verify": "none", "check_hostname": False},
                "username": "watcher",
                "password": "***",
                "connect_timeout": 2.0,
                "socket_timeout": 0.5,
                "keepalive": True,
            },
        ],
    }


@pytest.mark.parametrize(
    ("redis", "expected"),
    [
        (
            "{cluster: true, url: 'redis://h:7000', sentinel: {service: m, nodes: ['redis://s:26379']}}",
            "line 1: redis.sentinel: value error, a Redis Cluster fails over by itself and has "
            "no sentinels: use either sentinel or cluster: true, not both",
        ),
        (
            "{sentinel: {service: m, nodes: ['redis://s:26379']}}",
            "redis.sentinel: value error, redis.url is 'memory://', but with sentinel it gives "
            "the master's db, login and TLS: use redis://",
        ),
        (
            "{url: 'unix:///run/r.sock', sentinel: {service: m, nodes: ['redis://s:26379']}}",
            "redis.sentinel: value error, redis.url is 'unix:///run/r.sock', but with sentinel",
        ),
        (
            "{url: 'redis://m', sentinel: {service: m, nodes: []}}",
            "redis.sentinel.nodes: value error, no sentinel to ask for the master: list at "
            "least one",
        ),
        (
            "{url: 'redis://m', sentinel: {nodes: ['redis://s:26379']}}",
            "redis.sentinel.service: required, but missing",
        ),
        (
            "{url: 'redis://m', sentinel: {service: 'my master', nodes: ['redis://s:26379']}}",
            "redis.sentinel.service: value error, service 'my master' is not a master name",
        ),
        (
            "{url: 'redis://m', sentinel: {service: m, nodes: ['redis://:pw@s']}}",
            "redis.sentinel.nodes[0]: value error, URL 'redis://:***@s' gives no port: give "
            "the sentinel's (usually 26379",
        ),
        (
            "{url: 'redis://m', sentinel: {service: m, nodes: ['redis://s:1', 'redis://s:2/1']}}",
            "redis.sentinel.nodes[1]: value error, URL 'redis://s:2/1' selects db 1, but a "
            "sentinel has no databases",
        ),
        (
            "{url: 'redis://m', sentinel: {service: m, nodes: ['memory://']}}",
            "redis.sentinel.nodes[0]: value error, unsupported URL 'memory://' for a sentinel",
        ),
        (
            "{url: 'redis://m', sentinel: {service: m, nodes: ['redis://s:1?ssl_cert_reqs=none']}}",
            "redis.sentinel.nodes[0]: URL argument ssl_cert_reqs is for TLS: use rediss://",
        ),
        (
            "{url: 'redis://m', sentinel: {service: m, master: x, nodes: ['redis://s:1']}}",
            "redis.sentinel.master: unknown option 'master'",
        ),
    ],
)
def test_a_bad_sentinel_config_is_refused_naming_the_key(
    tmp_path: Path, capsys, redis: str, expected: str
) -> None:
    from taskhub.cli.main import main  # noqa: PLC0415

    path = tmp_path / "config.yaml"
    path.write_text(f"redis: {redis}\n")
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err
    assert expected in err
    assert "Traceback" not in err and "pw" not in err.replace("'pw'", "")


def test_a_bad_sentinel_url_argument_names_its_line(tmp_path: Path) -> None:
    text = (
        "redis:\n  url: redis://m\n  sentinel:\n    service: m\n    nodes:\n"
        "      - redis://s1:26379\n      - rediss://s2:26379?ssl_ca_certs=/nowhere/ca.crt\n"
    )
    error = str(errors_of(tmp_path, text))
    assert "line 7: redis.sentinel.nodes[1]: ssl_ca_certs=/nowhere/ca.crt: no such file" in error


async def test_the_sentinel_client_uses_the_context_built_at_load(tmp_path: Path) -> None:
    from taskhub.store.sentinel import PreparedSentinelSSLConnection  # noqa: PLC0415

    hub = hub_from(tmp_path, SENTINEL)
    endpoint = hub.connections.endpoints.redis
    assert endpoint is not None and endpoint.tls is not None and endpoint.sentinels is not None
    client = hub.connections.connect()
    connection = client.connection_pool.make_connection()
    assert isinstance(connection, PreparedSentinelSSLConnection)
    assert connection.ssl_context.get() is endpoint.tls.context
    assert connection.db == 2 and connection.password == "master-pw"
    sentinels = client.connection_pool.sentinel_manager.sentinels  # type: ignore[attr-defined]
    second = sentinels[1].connection_pool.make_connection()
    assert isinstance(second, PreparedSSLConnection)
    assert (second.host, second.port, second.username) == ("s2", 26380, "watcher")
    await client.aclose()


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
