"""Redis Sentinel: the master's address, asked of the sentinels on every (re)connect.

redis-py's ``Sentinel`` does the asking for every kind of connection, so they all
agree on who the master is: ``SENTINEL MASTERS`` of each sentinel in turn, skipping
a master that sentinel sees as down, and the first that answers moves to the front.

- The redis-py clients (queue, worker, admin) are ``master_for`` clients: their pool
  asks before each new connection, and a connection that hears READONLY (its server
  was demoted) is dropped, so the next one asks again.
- The admission pipeline asks through :class:`MasterLocator` before each connect,
  and checks with ``ROLE`` that the server it reached is the master.

Each sentinel is reached with its own URL's login, TLS and timeouts; the master
with ``redis.url``'s (its db, ACL user, TLS context built at load).
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.asyncio.sentinel import Sentinel, SentinelManagedConnection

from taskhub.store.connection import (
    HEALTH_CHECK_INTERVAL,
    ConnectionSettings,
    PreparedSSLConnection,
)
from taskhub.store.urls import Address


class PreparedSentinelSSLConnection(SentinelManagedConnection, PreparedSSLConnection):
    """A master connection over TLS on the SSL context built at load, as every other's."""


class SentinelMasterClient(Redis):
    """A ``master_for`` client that closes its connections to the sentinels with it."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        await close_sentinels(self.connection_pool.sentinel_manager)  # type: ignore[attr-defined]


def sentinel_manager(connection: ConnectionSettings) -> Sentinel:
    """redis-py's Sentinel over clients built from each sentinel's own settings (its
    constructor would give them all the same login and TLS)."""
    sentinels = connection.sentinels
    if sentinels is None:
        raise ValueError(f"{connection.name} is not reached through sentinels")
    manager = Sentinel([])  # type: ignore[no-untyped-call]  # redis-py: no hints here
    manager.sentinels = [node.client() for node in sentinels.nodes]
    return manager


def master_client(connection: ConnectionSettings, blocking_timeout: float = 0.0) -> Redis:
    """A redis-py client on the master the sentinels name, found again after a failover."""
    assert connection.sentinels is not None
    kwargs: dict[str, Any] = connection.redis_kwargs(blocking_timeout)
    del kwargs["host"], kwargs["port"]  # the sentinels say where
    if kwargs.pop("connection_class", None) is not None:  # TLS, on the prepared context
        kwargs["connection_class"] = PreparedSentinelSSLConnection
    client: Redis = sentinel_manager(connection).master_for(
        connection.sentinels.service,
        redis_class=SentinelMasterClient,
        db=connection.db,
        health_check_interval=HEALTH_CHECK_INTERVAL,
        **kwargs,
    )
    return client


class MasterLocator:
    """Where the master is now, for the admission pipeline: asked on every connect."""

    def __init__(self, connection: ConnectionSettings) -> None:
        assert connection.sentinels is not None
        self.service = connection.sentinels.service
        self.manager = sentinel_manager(connection)

    async def master(self) -> Address:
        """The master's address; MasterNotFoundError (a ConnectionError: "unavailable")
        while no sentinel names a live one, as during a switch."""
        host, port = await self.manager.discover_master(self.service)
        return str(host), int(port)

    async def close(self) -> None:
        await close_sentinels(self.manager)


async def close_sentinels(manager: Sentinel) -> None:
    for sentinel in manager.sentinels:
        await sentinel.aclose()
