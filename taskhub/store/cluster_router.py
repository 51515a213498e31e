"""The admission fast path on a Redis Cluster: one RedisPipeline per master, routed by slot.

A script call goes to the master of its first key's hash slot. Every key of a
call must be in that slot (the key layout's hash tag sees to it); a call whose
keys are not is a bug in the layout, refused before it leaves. The slot map
comes from ``CLUSTER SLOTS`` and is read again, at most once per
``REFRESH_INTERVAL`` and by one caller at a time, when:

- a node answers ``MOVED`` (the slot has a new owner): the call is retried
  once on the owner the reply names;
- a node answers ``ASK`` (the slot is migrating, this key has left): the call
  is retried once on the target, right after ``ASKING``, and the map is kept;
- a node cannot be reached: the call fails as it would on a single Redis
  (ConnectionError or TimeoutError, read upstream as "Redis is unavailable",
  503) and the next calls find the promoted replica once the map has it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from taskhub.store.connection import ConnectionSettings
from taskhub.store.pipeline import Arg, PipelinedScript, RedisPipeline, ScriptCall
from taskhub.store.urls import Address

logger = logging.getLogger(__name__)

REFRESH_INTERVAL = 0.25  # seconds: the least time between two reads of the slot map


class CrossSlotKeys(ValueError):
    """A call's keys hash to more than one slot: the key layout is wrong, not Redis."""


class ClusterPipeline:
    """RedisPipeline's ``script(source)`` interface, over every master of a cluster."""

    def __init__(self, connection: ConnectionSettings) -> None:
        self.connection = connection
        self._sources: list[str] = []  # loaded on every node
        self._nodes: dict[Address, RedisPipeline] = {}
        self._slots: list[RedisPipeline | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
        self._refreshing: asyncio.Task[None] | None = None
        self._refreshed_at = -REFRESH_INTERVAL

    def script(self, source: str) -> ClusterScript:
        self._sources.append(source)
        for node in self._nodes.values():
            node.script(source)
        return ClusterScript(self, source)

    # ------------------------------------------------------------------ routing

    async def node_for(self, slot: int) -> RedisPipeline:
        node = self._slots[slot]
        if node is None:  # no map yet, or the last read found nobody serving it
            await self.refresh()
            node = self._slots[slot]
            if node is None:
                raise RedisConnectionError(f"no Redis Cluster node serves slot {slot}")
        return node

    def node_at(self, address: Address) -> RedisPipeline:
        """The pipeline to ``address``, opened on first use (it connects lazily)."""
        node = self._nodes.get(address)
        if node is None:
            # The seed's credentials, TLS and timeouts: every node is reached the same way.
            node = self._nodes[address] = RedisPipeline(self.connection.at(address))
            for source in self._sources:
                node.script(source)
        return node

    def moved(self, slot: int, address: Address) -> RedisPipeline:
        """``MOVED``: the slot's owner is known at once; the rest of the map may be stale."""
        node = self._slots[slot] = self.node_at(address)
        self.refresh_soon()
        return node

    # ------------------------------------------------------------------ the slot map

    def refresh_soon(self) -> None:
        """Read the slot map in the background, unless it was read a moment ago."""
        if self._refreshing is None and time.monotonic() - self._refreshed_at >= REFRESH_INTERVAL:
            self._refreshing = asyncio.create_task(self._refresh(), name="cluster-slots")
            self._refreshing.add_done_callback(_log_failure)

    async def refresh(self) -> None:
        """Read the slot map now, or join the read under way; rate-limited like the rest."""
        if self._refreshing is None:
            if time.monotonic() - self._refreshed_at < REFRESH_INTERVAL:
                return
            self._refreshing = asyncio.create_task(self._refresh(), name="cluster-slots")
        await asyncio.shield(self._refreshing)

    async def _refresh(self) -> None:
        try:
            slots = await self._read_slots()
            log_moves(self._slots, slots)  # the first read moves nothing: no owner before
            self._slots = slots
        finally:
            self._refreshed_at = time.monotonic()
            self._refreshing = None

    async def _read_slots(self) -> list[RedisPipeline | None]:
        """``CLUSTER SLOTS`` from the first node that answers: known masters, then seeds."""
        candidates = list(dict.fromkeys([*self._masters(), *self.connection.seeds]))
        errors = []
        for address in candidates:
            try:
                reply = await self.node_at(address).call("CLUSTER", "SLOTS")
            except (RedisConnectionError, RedisTimeoutError, ResponseError) as exc:
                errors.append(f"{address[0]}:{address[1]}: {exc}")
                continue
            slots: list[RedisPipeline | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
            for start, end, master, *_ in reply:
                host = master[0].decode() or address[0]  # empty: the node we asked
                node = self.node_at((host, int(master[1])))
                slots[start : end + 1] = [node] * (end - start + 1)
            return slots
        raise RedisConnectionError(f"no Redis Cluster node answered: {'; '.join(errors)}")

    def _masters(self) -> list[Address]:
        serving = {id(node) for node in self._slots if node is not None}
        return [address for address, node in self._nodes.items() if id(node) in serving]

    async def masters(self) -> list[RedisPipeline]:
        """Every master that serves a slot, as the slot map has them (read first if due)."""
        await self.refresh()
        masters = list({id(node): node for node in self._slots if node is not None}.values())
        if not masters:
            raise RedisConnectionError("no Redis Cluster node serves any slot")
        return masters

    def owner(self, slot: int) -> RedisPipeline | None:
        """The master of ``slot`` in the slot map as last read; None if nobody serves it."""
        return self._slots[slot]

    async def ping(self) -> None:
        """PING every master on the connection admissions use: ready only if each answers,
        since each serves some users' admissions."""
        masters = await self.masters()
        try:
            await asyncio.gather(*(node.ping() for node in masters))
        except (RedisConnectionError, RedisTimeoutError):
            self.refresh_soon()  # a failover: the next look may find the promoted replica
            raise

    async def close(self) -> None:
        if self._refreshing is not None:
            self._refreshing.cancel()
        for node in self._nodes.values():
            await node.close()


class ClusterScript:
    """A Lua script run on the master of its keys' slot, following MOVED and ASK once."""

    def __init__(self, cluster: ClusterPipeline, source: str) -> None:
        self.cluster = cluster
        self.source = source
        self._on_node: dict[int, PipelinedScript] = {}  # id(node pipeline) -> its script

    async def __call__(self, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        slot = slot_of(keys)
        node = await self.cluster.node_for(slot)
        try:
            return await self._on(node)(keys, args)
        except ResponseError as exc:
            redirect = str(exc).split()
            if redirect[0] == "MOVED" and len(redirect) == 3:
                node = self.cluster.moved(slot, _parse_address(redirect[2]))
                return await self._on(node)(keys, args)
            if redirect[0] == "ASK" and len(redirect) == 3:
                target = self.cluster.node_at(_parse_address(redirect[2]))
                return await target.call_asking("EVAL", self.source, len(keys), *keys, *args)
            raise
        except (RedisConnectionError, RedisTimeoutError):
            self.cluster.refresh_soon()  # a failover moves this slot elsewhere
            raise

    async def many(self, calls: Sequence[ScriptCall]) -> list[Any]:
        """Each call on its slot's master: one write per master, the masters at once.

        Calls keep their order on each master (the order that matters: one user's
        keys are in one slot). A call answered MOVED or ASK runs again on its own,
        after the rest, in order. A master that cannot be reached fails its calls
        only (their exceptions in their places); the others' replies stand.
        """
        by_node: dict[int, tuple[RedisPipeline, list[int]]] = {}
        replies: list[Any] = [None] * len(calls)
        for index, (keys, _) in enumerate(calls):
            slot = slot_of(keys)
            try:
                node = await self.cluster.node_for(slot)
            except (RedisConnectionError, RedisTimeoutError) as exc:
                replies[index] = exc
                continue
            by_node.setdefault(id(node), (node, []))[1].append(index)
        answers = await asyncio.gather(
            *(self._on(node).many([calls[i] for i in at]) for node, at in by_node.values())
        )
        for (_, at), answer in zip(by_node.values(), answers, strict=True):
            for index, reply in zip(at, answer, strict=True):
                replies[index] = reply
        for index, reply in enumerate(replies):
            if isinstance(reply, (RedisConnectionError, RedisTimeoutError)):
                self.cluster.refresh_soon()  # a failover moves these slots elsewhere
            elif isinstance(reply, ResponseError) and str(reply).split()[0] in ("MOVED", "ASK"):
                try:
                    replies[index] = await self(*calls[index])
                except (ResponseError, RedisConnectionError, RedisTimeoutError) as exc:
                    replies[index] = exc
        return replies

    def _on(self, node: RedisPipeline) -> PipelinedScript:
        script = self._on_node.get(id(node))
        if script is None:
            script = self._on_node[id(node)] = node.script(self.source)
        return script


def slot_of(keys: Sequence[Arg]) -> int:
    """The hash slot every key of a call is in; CrossSlotKeys if they are not in one."""
    if not keys:
        raise CrossSlotKeys("a script call on a Redis Cluster needs a key to route it by")
    encoded = [k if isinstance(k, bytes) else str(k).encode() for k in keys]
    slot = key_slot(encoded[0])
    for key in encoded[1:]:
        if key_slot(key) != slot:
            raise CrossSlotKeys(
                f"keys {encoded[0]!r} (slot {slot}) and {key!r} (slot {key_slot(key)}) of one "
                "script call are in different hash slots: every key of a call needs the same "
                "{hash tag}"
            )
    return slot


def _parse_address(text: str) -> Address:
    host, _, port = text.rpartition(":")
    return host, int(port)


def log_moves(old: list[RedisPipeline | None], new: list[RedisPipeline | None]) -> None:
    """One line per master that lost slots (a failover, a resharding): where they went."""
    moved: dict[tuple[str, str], int] = {}
    for was, now in zip(old, new, strict=True):
        if was is not now and was is not None:
            route = (_name(was), _name(now) if now is not None else "nobody")
            moved[route] = moved.get(route, 0) + 1
    for (source, target), count in moved.items():
        logger.warning(
            "Redis Cluster: %d slot(s) of %s are now served by %s", count, source, target
        )


def _name(node: RedisPipeline) -> str:
    return node.connection.name


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.debug("reading the Redis Cluster slot map failed: %s", task.exception())


def admission_pipeline(
    connection: ConnectionSettings | None,
) -> RedisPipeline | ClusterPipeline | None:
    """The admission script's fast path: routed over the masters of a cluster, one
    connection to a single Redis, none for the embedded one (None: fakeredis has no
    socket)."""
    if connection is None:
        return None
    if connection.cluster:
        return ClusterPipeline(connection)
    return RedisPipeline(connection)
