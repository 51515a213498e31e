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

Both also listen for the sentinels' ``+switch-master`` (:class:`SwitchWatcher`) and
drop their connections when it names their service: when the old master still runs
(a manual failover, a partition) it takes writes until a sentinel demotes it, up to
10 s later, and loses them then; without the watcher, open connections would keep
writing there. The sentinel that announced the switch is asked first from then on,
as the others may still name the old master for a moment.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection
from redis.exceptions import RedisError

from taskhub.store.connection import (
    HEALTH_CHECK_INTERVAL,
    ConnectionSettings,
    PreparedSSLConnection,
)
from taskhub.store.urls import Address

logger = logging.getLogger(__name__)

SWITCH_CHANNEL = "+switch-master"
POLL = 1.0  # seconds one wait for a switch message lasts (then it waits again)
RETRY = 1.0  # seconds before subscribing again when no sentinel would take it
_announced: dict[str, Address] = {}  # the last switch logged, per service


class PreparedSentinelSSLConnection(SentinelManagedConnection, PreparedSSLConnection):
    """A master connection over TLS on the SSL context built at load, as every other's."""


class WatchedSentinelPool(SentinelConnectionPool):
    """redis-py's pool on the master, which also drops every connection (in use or
    idle) when the sentinels announce a switch, so none keeps writing to the old one."""

    def __init__(self, service_name: str, sentinel_manager: Sentinel, **kwargs: Any) -> None:
        super().__init__(service_name, sentinel_manager, **kwargs)  # type: ignore[no-untyped-call]
        self.watcher = SwitchWatcher(sentinel_manager, service_name, self._switched)

    async def get_master_address(self) -> Any:
        self.watcher.start()  # on the first connection, in the loop that uses the pool
        return await super().get_master_address()  # type: ignore[no-untyped-call]

    def _switched(self, master: Address) -> None:
        if self.master_address == master:  # already there (connected after the switch)
            return
        task = asyncio.get_running_loop().create_task(self.disconnect(inuse_connections=True))
        task.add_done_callback(_log_failure)


class SentinelMasterClient(Redis):
    """A ``master_for`` client that closes its watcher and its connections to the
    sentinels with it."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        pool = self.connection_pool
        assert isinstance(pool, WatchedSentinelPool)
        await pool.watcher.close()
        await super().aclose(close_connection_pool)
        await close_sentinels(pool.sentinel_manager)


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
        connection_pool_class=WatchedSentinelPool,
        db=connection.db,
        health_check_interval=HEALTH_CHECK_INTERVAL,
        **kwargs,
    )
    return client


class MasterLocator:
    """Where the master is now, for the admission pipeline: asked on every connect;
    ``on_switch`` is called when the sentinels announce a new one."""

    def __init__(
        self, connection: ConnectionSettings, on_switch: Callable[[Address], None]
    ) -> None:
        assert connection.sentinels is not None
        self.service = connection.sentinels.service
        self.manager = sentinel_manager(connection)
        self.watcher = SwitchWatcher(self.manager, self.service, on_switch)

    async def master(self) -> Address:
        """The master's address; MasterNotFoundError (a ConnectionError: "unavailable")
        while no sentinel names a live one, as during a switch."""
        self.watcher.start()
        host, port = await self.manager.discover_master(self.service)
        return str(host), int(port)

    async def close(self) -> None:
        await self.watcher.close()
        await close_sentinels(self.manager)


class SwitchWatcher:
    """Subscribed to ``+switch-master`` on one sentinel at a time (the next one when it
    fails); calls ``on_switch`` with the new master's address when a message names
    ``service``."""

    def __init__(
        self, manager: Sentinel, service: str, on_switch: Callable[[Address], None]
    ) -> None:
        self.manager = manager
        self.service = service
        self.on_switch = on_switch
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._watch(), name="sentinel")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _watch(self) -> None:
        while True:
            for sentinel in list(self.manager.sentinels):
                try:
                    await self._listen(sentinel)
                except (RedisError, OSError) as exc:
                    logger.debug("not watching sentinel %s for switches: %s", sentinel, exc)
            await asyncio.sleep(RETRY)

    async def _listen(self, sentinel: Redis) -> None:
        pubsub = sentinel.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(SWITCH_CHANNEL)
            while True:
                message = await pubsub.get_message(timeout=POLL)
                if message is None:
                    continue
                # "<service> <old ip> <old port> <new ip> <new port>"
                words = message["data"].decode(errors="replace").split()
                if len(words) == 5 and words[0] == self.service and words[4].isdigit():
                    master = words[3], int(words[4])
                    if _announced.get(self.service) != master:  # once per process
                        _announced[self.service] = master
                        logger.info("Redis Sentinel: master %r is now %s:%d", self.service, *master)
                    self._ask_first(sentinel)
                    self.on_switch(master)
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]

    def _ask_first(self, sentinel: Redis) -> None:
        """The sentinel that announced the switch knows the new master: ask it first."""
        sentinels = self.manager.sentinels
        if sentinel in sentinels:
            sentinels.remove(sentinel)
            sentinels.insert(0, sentinel)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.debug("dropping connections after a switch failed: %s", task.exception())


async def close_sentinels(manager: Sentinel) -> None:
    for sentinel in manager.sentinels:
        await sentinel.aclose()
