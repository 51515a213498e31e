"""redis-py's RedisCluster, fitted to what taskhub and SAQ ask of a client.

Every key of a queue, and of one admission, shares one hash tag, so the
multi-key commands and scripts taskhub sends stay within one slot and
RedisCluster routes them as they are. What it lacks or routes otherwise:

- ``pubsub``: SAQ builds one for ``Queue.listen``, which taskhub never calls;
  the stand-in lets a queue be built and fails loudly if anyone subscribes.
- ``pipeline(transaction=True)``: refused by RedisCluster. Every taskhub caller
  is read-only (status snapshots) or repeats harmlessly (removing a vanished
  job from its lists, resetting a rule's keys, a worker's stats), so here it
  runs as a plain pipeline, without MULTI/EXEC.
- ``connection_pool``: SAQ disconnects it after closing the client; a cluster
  client has one pool per node, all closed with the client.
- ``info``: sent to every node by default (a dict of replies); taskhub wants
  one server's, e.g. its version.
- ``script_load``: sent to the nodes redis-py's node list calls primaries. After a
  failover redis-py 7.4 re-reads the slot map but keeps its old node object for the
  promoted replica, typed as a replica still (redis-py#2433, fixed in 4.5 and back
  since the node list keeps old objects), so a script never reached the new master
  and every call of it there failed with NOSCRIPT until a restart. Here it goes to
  the master of every slot, as the slot map has them.
- the startup nodes: redis-py replaces them with the nodes the cluster reports
  (``dynamic_startup_nodes``) and pins ``localhost`` to the address it had when the
  client was built, so a cluster that came back elsewhere (a host name that now
  resolves to new addresses) could never be found again (redis-py#2472, and the
  startup nodes it once dropped for good after connection errors, #3221, #3693).
  Here the nodes the cluster reports come first, as in redis-py (a seed may be the
  master that died), and the configured seeds stay after them, host names and all;
  each reconnect resolves a name again.
- the slot map: on each read of it redis-py keeps its old node objects in its node
  list but points the slots at new ones, which then get the connections; the next
  read (after any connection error, e.g. while a cluster comes back) drops them with
  their connections open ("Unclosed ClusterNode object", an ERROR from asyncio, and
  leaked sockets). Here the slots point at the node list's objects.
- the first commands of a new client: issued at once (ten scripts of a schedule's
  racers), they each began redis-py's command path before the slot map was read,
  and with a ``socket_timeout`` some then failed with "Connection closed by server"
  or ``'NoneType' object has no attribute 'writelines'`` (redis-py 7.4: 9 of 250
  calls on the local cluster). Here a command first waits for the map, read once.
- reading the slot map while no node answers: redis-py tries every seed on every
  command, and again for each of its retries. Here a failed read is not tried again
  for ``REFRESH_INTERVAL`` (as taskhub's own router): commands meanwhile fail at once,
  as unavailable, and a whole-cluster outage costs little CPU.
"""

from __future__ import annotations

import time
from typing import Any, NoReturn

from redis.asyncio.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.typing import ScriptTextT

from taskhub.store.cluster_router import REFRESH_INTERVAL
from taskhub.store.connection import ConnectionSettings
from taskhub.store.unavailable import is_unavailable

NO_PUBSUB = (
    "Redis Cluster has no cluster-wide pubsub in this client: taskhub's queue on a "
    "cluster does not listen for job changes"
)


class ClusterClient(RedisCluster):
    _map_failed: tuple[float, str] | None = None  # when reading the slot map last failed, why
    _seeds: list[ClusterNode]  # the configured nodes, whatever the cluster reports

    @classmethod
    def for_settings(cls, connection: ConnectionSettings, blocking_timeout: float) -> ClusterClient:
        """Seeded with ``url`` and ``nodes``; credentials, TLS and timeouts from ``url``'s
        settings, the same every other connection to the cluster uses."""
        kwargs = connection.redis_kwargs(blocking_timeout)
        del kwargs["host"], kwargs["port"]  # the seeds say where
        connection_class = kwargs.pop("connection_class", None)
        context = kwargs.pop("prepared_context", None)
        seeds = [ClusterNode(host, port) for host, port in connection.seeds]
        client = cls(
            startup_nodes=seeds,
            ssl=connection.tls is not None,
            **kwargs,
        )
        client._keep_host_names(connection)
        client._seeds = list(client.nodes_manager.startup_nodes.values())
        if connection_class is not None:
            client._use_prepared_tls(connection_class, context)
        return client

    def _keep_host_names(self, connection: ConnectionSettings) -> None:
        """Undo redis-py's one-off lookup of ``localhost`` (the only name it pins) in the
        seeds: they connect by the name, looked up again on every connect."""
        named = {port for host, port in connection.seeds if host == "localhost"}
        for node in self.nodes_manager.startup_nodes.values():
            if int(node.port) in named:
                node.host = node.connection_kwargs["host"] = "localhost"

    def _use_prepared_tls(self, connection_class: type, context: Any) -> None:
        """RedisCluster takes TLS settings but no connection class: its nodes, those made
        so far and those it finds later (from the same kwargs), get the one prepared."""
        extra = {"prepared_context": context}
        self.connection_kwargs.update(connection_class=connection_class, **extra)
        for node in self.nodes_manager.startup_nodes.values():
            node.connection_class = connection_class
            node.connection_kwargs.update(extra)

    async def initialize(self) -> ClusterClient:
        if not self._initialize:
            return self
        failed = self._map_failed
        if failed is not None and time.monotonic() - failed[0] < REFRESH_INTERVAL:
            raise RedisConnectionError(f"{failed[1]} (tried again shortly)")
        try:
            await super().initialize()  # reads the map (under redis-py's lock)
        except Exception as exc:
            if is_unavailable(exc):  # a bug (say, no cluster at all) is raised each time
                self._map_failed = (time.monotonic(), str(exc))
            raise
        self._map_failed = None
        self._route_to_listed_nodes()
        startup = self.nodes_manager.startup_nodes  # the nodes found; then the seeds again
        for seed in self._seeds:
            startup.setdefault(seed.name, seed)
        return self

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        if self._initialize:  # the slot map first, then redis-py's path (see above)
            await self.initialize()
        return await super().execute_command(*args, **kwargs)

    def _route_to_listed_nodes(self) -> None:
        """Each slot's nodes as the objects of the node list, one per address."""
        listed = self.nodes_manager.nodes_cache
        slots = self.nodes_manager.slots_cache
        # A range of slots shares one list: one new list for it (the old kept till the end,
        # so that no id is reused meanwhile).
        shared: dict[int, tuple[list[ClusterNode], list[ClusterNode]]] = {}
        for slot, owners in slots.items():
            if id(owners) not in shared:
                shared[id(owners)] = (owners, [listed.get(node.name, node) for node in owners])
            slots[slot] = shared[id(owners)][1]

    def pubsub(self, **_: Any) -> _NoPubSub:
        return _NoPubSub()

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> ClusterPipeline:
        return super().pipeline(shard_hint=shard_hint)

    @property  # a cluster has a pool per node, closed with the client
    def connection_pool(self) -> _ClosedWithClient:
        return _ClosedWithClient()

    async def info(self, section: str | None = None, *args: str, **kwargs: Any) -> Any:
        kwargs.setdefault("target_nodes", RedisCluster.RANDOM)
        return await super().info(section, *args, **kwargs)

    async def script_load(self, script: ScriptTextT) -> Any:
        masters = {n[0].name: n[0] for n in self.nodes_manager.slots_cache.values() if n}
        if not masters:  # no slot map yet: the first command reads it
            return await super().script_load(script)
        return await self.execute_command("SCRIPT LOAD", script, target_nodes=[*masters.values()])


class _NoPubSub:
    """Enough of a PubSub for SAQ to build (and close) a queue with."""

    async def psubscribe(self, *_: Any) -> NoReturn:
        raise NotImplementedError(NO_PUBSUB)

    async def punsubscribe(self, *_: Any) -> None:
        return None

    async def aclose(self) -> None:
        return None


class _ClosedWithClient:
    async def disconnect(self) -> None:
        return None
