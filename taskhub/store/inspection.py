"""What a Redis says about itself: each master's eviction policy and, on a cluster,
which of a queue's shards each master serves. Read at start-up and by ``taskhub check``.

The policy comes from ``INFO memory`` (its ``maxmemory_policy`` field), which ACL
users taskhub's documented rule allows and managed services that disable ``CONFIG``
still answer; ``CONFIG GET maxmemory-policy`` only when that fails. Each master is
asked on a pipelined connection of its own, opened and closed here, the masters of a
cluster as the admission router finds them: from the slot map.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from taskhub.store.cluster_router import ClusterPipeline, admission_pipeline
from taskhub.store.connection import ConnectionSettings
from taskhub.store.pipeline import RedisPipeline
from taskhub.store.sharding import UNSHARDED, Shards

NOEVICTION = "noeviction"
UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)


@dataclass(frozen=True)
class MasterState:
    """One master: its policy, or why it could not be read; the queue's shards it serves."""

    name: str  # host:port, or the socket's path
    policy: str | None
    unread: str = ""  # why policy is None
    shards: tuple[int, ...] = ()  # on a cluster: the shards whose hash tag it serves

    @property
    def evicts(self) -> bool:
        """A policy that lets Redis delete keys when full: anything but noeviction."""
        return self.policy is not None and self.policy != NOEVICTION


class PolicyUnknown(Exception):
    """The server answered, but refused (or lacks) both ways of reading the policy."""


async def inspect(connection: ConnectionSettings, shards: Shards = UNSHARDED) -> list[MasterState]:
    """Every master behind ``connection`` (one, or each of a cluster's), asked at once.

    A master that cannot be reached is a state with ``unread`` set; a cluster whose slot
    map no node gives raises redis-py's ConnectionError.
    """
    pipeline = admission_pipeline(connection)
    assert pipeline is not None  # a connection is never the embedded store
    try:
        if isinstance(pipeline, ClusterPipeline):
            masters = await pipeline.masters()
            served = shards_by_master(pipeline, shards)
        else:
            masters, served = [pipeline], {}
        states = (master_state(node, served.get(id(node), ())) for node in masters)
        return list(await asyncio.gather(*states))
    finally:
        await pipeline.close()


def shards_by_master(cluster: ClusterPipeline, shards: Shards) -> dict[int, tuple[int, ...]]:
    """id(master) -> the shards whose tag hashes into a slot it serves."""
    served: dict[int, list[int]] = {}
    for shard in range(shards.count if shards.tagged else 0):
        owner = cluster.owner(key_slot(shards.tag(shard).encode()))
        if owner is not None:
            served.setdefault(id(owner), []).append(shard)
    return {master: tuple(found) for master, found in served.items()}


async def master_state(node: RedisPipeline, shards: tuple[int, ...]) -> MasterState:
    try:
        policy = await eviction_policy(node)
    except PolicyUnknown as exc:
        return MasterState(node.server_name, None, f"it refused to say ({exc})", shards)
    except UNREACHABLE as exc:
        said = f"it did not answer ({exc or type(exc).__name__})"
        return MasterState(node.server_name, None, said, shards)
    return MasterState(node.server_name, policy, shards=shards)


async def eviction_policy(node: RedisPipeline) -> str:
    """``maxmemory-policy``, from INFO memory or else CONFIG GET; PolicyUnknown says why not."""
    refusals = []
    try:
        info: bytes = await node.call("INFO", "memory")
    except ResponseError as exc:
        refusals.append(f"INFO: {exc}")
    else:
        for line in info.splitlines():
            field, _, value = line.partition(b":")
            if field == b"maxmemory_policy":
                return value.decode().strip()
        refusals.append("INFO memory has no maxmemory_policy")
    try:
        reply = await node.call("CONFIG", "GET", "maxmemory-policy")
    except ResponseError as exc:
        refusals.append(f"CONFIG GET: {exc}")
    else:
        if len(reply) == 2:
            return bytes(reply[1]).decode()
        refusals.append("CONFIG GET maxmemory-policy: no such setting")
    raise PolicyUnknown("; ".join(refusals))
