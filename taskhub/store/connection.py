"""One Redis's connection settings, read from its URL as redis-py reads it.

Every connection taskhub opens is made from one of these: the admission
pipeline, the cluster router's connection to each master, the redis-py clients
of the queue, the worker, the admin commands and the cluster, and the client on
``limits.redis_url``. So none of them can reach a Redis the others cannot (the
admission pipeline once built a default SSL context of its own and answered 503
where redis-py, honouring ``?ssl_ca_certs=``, connected).

The URL is parsed by redis-py's own ``parse_url``; taskhub adds the checks that
redis-py leaves to the first connect (an unknown argument, a bad
``ssl_cert_reqs``, an unreadable CA file), made when the config loads, and builds
each URL's SSL context once, with redis-py's own ``RedisSSLContext``, so no
connect reads certificate files in the event loop. Timeouts and keep-alive come
from the ``redis:`` section unless the URL names them, as a redis-py URL
argument overrides its keyword argument.
"""

from __future__ import annotations

import dataclasses
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import (
    Connection,
    RedisSSLContext,
    SSLConnection,
    UnixDomainSocketConnection,
    parse_url,
)

from taskhub.config.models import RedisSettings, SentinelSettings
from taskhub.store.urls import Address, is_embedded

CERT_REQS = ("none", "optional", "required")
# The URL arguments taskhub supports: redis-py's, less those that would change what
# taskhub relies on (protocol, client_name, retries, pool sizes...).
TLS_ARGUMENTS = (
    "ssl_ca_certs",
    "ssl_ca_path",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_password",
    "ssl_cert_reqs",
    "ssl_check_hostname",
)
URL_ARGUMENTS = (
    "db",
    "username",
    "password",
    *TLS_ARGUMENTS,
    "socket_timeout",
    "socket_connect_timeout",
    "socket_keepalive",
)
HEALTH_CHECK_INTERVAL = 30  # seconds idle before redis-py PINGs a pooled connection


class InvalidConnection(ValueError):
    """A URL redis-py would take, and fail on at connect time; says what is allowed.

    ``key`` is the config key at fault within the ``redis`` section: ``url``, or
    ``("nodes", i)`` for a seed node.
    """

    def __init__(self, message: str, key: tuple[str | int, ...] = ("url",)) -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """How a ``rediss://`` connection verifies the server, and proves who it is."""

    cert_reqs: str = "required"  # redis-py's SSLConnection defaults, checked by a test
    check_hostname: bool = True
    ca_certs: str | None = None
    ca_path: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    password: str | None = field(default=None, repr=False)
    context: ssl.SSLContext | None = field(default=None, repr=False, compare=False)

    def built(self) -> TlsSettings:
        """With its SSL context, made by redis-py from these settings, the files read now."""
        self._check_files()
        context = RedisSSLContext(
            cert_reqs=self.cert_reqs,
            check_hostname=self.check_hostname,
            ca_certs=self.ca_certs,
            ca_path=self.ca_path,
            certfile=self.certfile,
            keyfile=self.keyfile,
            password=self.password,
        ).get()
        return dataclasses.replace(self, context=context)

    @property
    def ssl_context(self) -> ssl.SSLContext:
        """The context every connection shares; never a default one made on the spot."""
        if self.context is None:
            raise RuntimeError("TlsSettings used before built(): no SSL context")
        return self.context

    def _check_files(self) -> None:
        """Each file on its own, so that an error names the URL argument at fault."""
        probe = ssl.create_default_context()
        if self.keyfile and not self.certfile:
            raise InvalidConnection("ssl_keyfile needs ssl_certfile, the certificate it goes with")
        if self.ca_certs:
            _usable(
                "ssl_ca_certs", self.ca_certs, lambda: probe.load_verify_locations(self.ca_certs)
            )
        if self.ca_path:
            _usable(
                "ssl_ca_path",
                self.ca_path,
                lambda: probe.load_verify_locations(capath=self.ca_path),
                directory=True,
            )
        if self.keyfile:
            _usable("ssl_keyfile", self.keyfile, lambda: None)
        if self.certfile:
            load = lambda: probe.load_cert_chain(self.certfile, self.keyfile, self.password)  # noqa: E731
            _usable("ssl_certfile", self.certfile, load)

    def describe(self) -> dict[str, Any]:
        shown: dict[str, Any] = {"verify": self.cert_reqs, "check_hostname": self.check_hostname}
        for name in ("ca_certs", "ca_path", "certfile", "keyfile"):
            if getattr(self, name):
                shown[name] = getattr(self, name)
        if self.password:
            shown["key_password"] = "***"
        return shown


@dataclass(frozen=True, slots=True)
class Sentinels:
    """The sentinels that name a master: each reached with its own URL's login and TLS."""

    service: str
    nodes: tuple[ConnectionSettings, ...]

    def describe(self) -> dict[str, Any]:
        nodes = []
        for node in self.nodes:
            shown = node.describe()
            del shown["db"]  # a sentinel has none
            nodes.append(shown)
        return {"service": self.service, "nodes": nodes}


@dataclass(frozen=True, slots=True)
class ConnectionSettings:
    """Where one Redis is and how to reach it; ``at`` gives the same for another node."""

    scheme: str  # redis, rediss or unix
    host: str = "localhost"
    port: int = 6379
    path: str | None = None  # unix://
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: TlsSettings | None = None
    connect_timeout: float = 2.0
    socket_timeout: float = 2.0
    keepalive: bool = True
    cluster: bool = False
    seeds: tuple[Address, ...] = ()  # a cluster's nodes to ask for the slot map first
    sentinels: Sentinels | None = None  # they name the master; host and port are unused

    @property
    def address(self) -> Address:
        return self.host, self.port

    @property
    def name(self) -> str:
        """What messages call this Redis: through sentinels, the master of their service
        (the URL's host and port are not where it is)."""
        if self.sentinels is not None:
            return f"the master of {self.sentinels.service!r}"
        return self.path or f"{self.host}:{self.port}"

    def at(self, address: Address) -> ConnectionSettings:
        """The same credentials, TLS and timeouts, to another node of the cluster, or to
        the master the sentinels named."""
        host, port = address
        return dataclasses.replace(self, host=host, port=port, seeds=(), sentinels=None)

    def redis_kwargs(self, blocking_timeout: float = 0.0) -> dict[str, Any]:
        """redis-py's keyword arguments for a client or a pool; ``blocking_timeout``, the
        longest blocking command the client will send, lengthens the socket timeout."""
        kwargs: dict[str, Any] = {
            "username": self.username,
            "password": self.password,
            "socket_connect_timeout": self.connect_timeout,
            "socket_timeout": self.socket_timeout + blocking_timeout,
        }
        if self.path is not None:
            return {**kwargs, "connection_class": UnixDomainSocketConnection, "path": self.path}
        kwargs.update(host=self.host, port=self.port, socket_keepalive=self.keepalive)
        if self.tls is not None:
            tls = self.tls
            kwargs.update(
                connection_class=PreparedSSLConnection,
                prepared_context=tls.ssl_context,
                ssl_cert_reqs=tls.cert_reqs,
                ssl_check_hostname=tls.check_hostname,
            )
        return kwargs

    def client(self, blocking_timeout: float = 0.0) -> Redis:
        """A redis-py client on one server (the cluster's is ClusterClient)."""
        kwargs = self.redis_kwargs(blocking_timeout)
        pool = ConnectionPool(db=self.db, health_check_interval=HEALTH_CHECK_INTERVAL, **kwargs)
        return Redis.from_pool(pool)

    def describe(self) -> dict[str, Any]:
        """What ``taskhub check`` shows: everything in effect, secrets masked."""
        shown: dict[str, Any] = {"scheme": self.scheme}
        if self.path is not None:
            shown["path"] = self.path
        elif self.sentinels is not None:
            shown["master"] = "the one the sentinels name (url's host and port are not used)"
            shown["sentinel"] = self.sentinels.describe()
        else:
            shown.update(host=self.host, port=self.port)
        if self.cluster:
            shown["seeds"] = [f"{host}:{port}" for host, port in self.seeds]
        else:
            shown["db"] = self.db
        shown["tls"] = self.tls.describe() if self.tls is not None else "off"
        shown["username"] = self.username or ("default" if self.password else None)
        shown["password"] = "***" if self.password else None
        shown.update(connect_timeout=self.connect_timeout, socket_timeout=self.socket_timeout)
        if self.path is None:
            shown["keepalive"] = self.keepalive
        return shown


class PreparedSSLConnection(SSLConnection):
    """redis-py's SSLConnection on a context built once, at start-up: its own would be
    built on its first connect, reading the certificate files in the event loop, once
    for every connection of every pool."""

    def __init__(self, *, prepared_context: ssl.SSLContext, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ssl_context.context = prepared_context


def connection_settings(redis: RedisSettings, url: str | None = None) -> ConnectionSettings | None:
    """``redis.url`` as taskhub connects to it, or another ``url`` (the limiter's own:
    always one server) with the same ``redis:`` timeouts; None for ``memory://``.

    Raises InvalidConnection naming the URL argument at fault and what is allowed.
    """
    url = redis.url if url is None else url
    if is_embedded(url):
        return None
    cluster = redis.cluster and url == redis.url
    settings = _parse(url, redis)
    if cluster:
        seeds = [settings.address]
        for index, node in enumerate(redis.nodes):
            try:
                seeds.append(seed_address(node, settings))
            except InvalidConnection as exc:
                raise InvalidConnection(str(exc), ("nodes", index)) from None
        settings = dataclasses.replace(settings, cluster=True, seeds=tuple(dict.fromkeys(seeds)))
    if redis.sentinel is not None and url == redis.url:
        settings = dataclasses.replace(settings, sentinels=_sentinels(redis.sentinel, redis))
    return settings


def _sentinels(sentinel: SentinelSettings, redis: RedisSettings) -> Sentinels:
    """Each sentinel's URL read as any other (its own login, TLS and timeouts)."""
    nodes = []
    for index, url in enumerate(sentinel.nodes):
        try:
            nodes.append(_parse(url, redis))
        except InvalidConnection as exc:
            raise InvalidConnection(str(exc), ("sentinel", "nodes", index)) from None
    return Sentinels(sentinel.service, tuple(nodes))


def seed_address(url: str, of: ConnectionSettings) -> Address:
    """A seed node's address; its URL gives only that: the rest is the cluster's url's."""
    parts = urlsplit(url)
    if parts.scheme.lower() != of.scheme:
        raise InvalidConnection(
            f"{_shown(url)} is {parts.scheme}:// but redis.url is {of.scheme}://: every "
            "node of a cluster is reached the same way"
        )
    if parts.query or parts.username or parts.password:
        raise InvalidConnection(
            f"{_shown(url)}: a seed node gives only host and port; credentials, TLS and "
            "timeouts come from redis.url"
        )
    return parts.hostname or "localhost", parts.port or 6379


def _parse(url: str, redis: RedisSettings) -> ConnectionSettings:
    query = dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))
    unknown = [name for name in query if name not in URL_ARGUMENTS]
    if unknown:
        raise InvalidConnection(
            f"unknown URL argument {unknown[0]!r}; taskhub supports {', '.join(URL_ARGUMENTS)}"
        )
    try:
        params: dict[str, Any] = dict(parse_url(url))
    except ValueError as exc:  # "Invalid value for 'db' in connection URL."
        raise InvalidConnection(str(exc)) from None
    kind = params.pop("connection_class", Connection)
    tls_given = [name for name in TLS_ARGUMENTS if name in params]
    if tls_given and kind is not SSLConnection:
        raise InvalidConnection(
            f"URL argument {tls_given[0]} is for TLS: use rediss:// (TLS), or drop it"
        )
    settings = ConnectionSettings(
        scheme=urlsplit(url).scheme.lower(),
        host=params.get("host", "localhost"),
        port=int(params.get("port", 6379)),
        path=params.get("path") if kind is UnixDomainSocketConnection else None,
        db=params.get("db", 0),
        username=params.get("username") or None,
        password=params.get("password") or None,
        tls=_tls(params).built() if kind is SSLConnection else None,
        connect_timeout=_seconds(params, "socket_connect_timeout", redis.connect_timeout),
        socket_timeout=_seconds(params, "socket_timeout", redis.socket_timeout),
        keepalive=params.get("socket_keepalive", True) is not False,
    )
    return settings


def _tls(params: dict[str, Any]) -> TlsSettings:
    cert_reqs = params.get("ssl_cert_reqs", "required")
    if cert_reqs not in CERT_REQS:
        raise InvalidConnection(
            f"ssl_cert_reqs={cert_reqs!r} is not one of {', '.join(CERT_REQS)} "
            "(none: no verification, for a self-signed certificate you cannot pass as "
            "ssl_ca_certs)"
        )
    check = params.get("ssl_check_hostname")
    return TlsSettings(
        cert_reqs=cert_reqs,
        # As redis-py: no hostname to check on a certificate nobody verifies.
        check_hostname=(check is not False) and cert_reqs != "none",
        ca_certs=params.get("ssl_ca_certs") or None,
        ca_path=params.get("ssl_ca_path") or None,
        certfile=params.get("ssl_certfile") or None,
        keyfile=params.get("ssl_keyfile") or None,
        password=params.get("ssl_password") or None,
    )


def _seconds(params: dict[str, Any], name: str, default: float) -> float:
    value = params.get(name)
    if value is None:
        return default
    if not 0 < value <= 3600:
        raise InvalidConnection(f"URL argument {name}={value:g} must be over 0 and at most 3600")
    return float(value)


def _usable(name: str, path: str, load: Callable[[], None], *, directory: bool = False) -> None:
    if not (os.path.isdir(path) if directory else os.path.isfile(path)):
        raise InvalidConnection(f"{name}={path}: no such {'directory' if directory else 'file'}")
    try:
        load()
    except ssl.SSLError as exc:
        raise InvalidConnection(
            f"{name}={path}: not usable for TLS ({exc.reason or exc})"
        ) from None
    except OSError as exc:
        raise InvalidConnection(f"{name}={path}: {exc.strerror or exc}") from None


def _shown(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}:{parts.port or ''}"
