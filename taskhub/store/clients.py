"""Open Redis clients from a URL: a real server, or embedded fakeredis for ``memory://``."""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING, TypeVar, cast

from redis.asyncio import Redis

from taskhub.config.models import RedisSettings
from taskhub.errors import BackendUnavailable
from taskhub.store.cluster_client import ClusterClient
from taskhub.store.connection import ConnectionSettings, connection_settings
from taskhub.store.sentinel import master_client
from taskhub.store.unavailable import is_unavailable, why_unavailable
from taskhub.store.urls import is_embedded

if TYPE_CHECKING:
    from fakeredis import FakeServer

__all__ = ["connect", "is_unavailable", "redis_call", "why_unavailable"]

logger = logging.getLogger(__name__)
T = TypeVar("T")

# Embedded servers live as long as the process, one per memory:// URL, so that the
# HTTP server and the worker of `taskhub run` share the same data.
_embedded: dict[str, FakeServer] = {}


async def redis_call(call: Awaitable[T]) -> T:
    """Await ``call``; Redis being unreachable becomes BackendUnavailable, bugs stay bugs."""
    try:
        return await call
    except Exception as exc:
        if is_unavailable(exc):
            raise BackendUnavailable(why_unavailable(exc)) from exc
        raise


def connect(
    settings: RedisSettings | ConnectionSettings, *, blocking_timeout: float = 0.0
) -> Redis:
    """A client on connection settings built once at load (the hub's), or on a
    ``RedisSettings``' url, read now (tests, one-off tools); ``memory://`` is embedded.

    ``blocking_timeout`` is the longest blocking command (such as BLMOVE) the client
    will issue; the socket timeout is extended by it so such commands are not cut off.
    """
    if isinstance(settings, RedisSettings):
        if is_embedded(settings.url):
            return _embedded_client(settings.url)
        built = connection_settings(settings)
        assert built is not None  # only memory:// has none
        settings = built
    if settings.cluster:
        # Duck-typed: every command taskhub sends exists on both (see ClusterClient).
        return cast(Redis, ClusterClient.for_settings(settings, blocking_timeout))
    if settings.sentinels is not None:
        return master_client(settings, blocking_timeout)
    return settings.client(blocking_timeout)


def _embedded_client(url: str) -> Redis:
    # Imported here so that processes on a real Redis never load fakeredis and Lua.
    from fakeredis import FakeAsyncRedis, FakeServer  # noqa: PLC0415

    server = _embedded.get(url)
    if server is None:
        server = _embedded[url] = FakeServer()
    return FakeAsyncRedis(server=server)
