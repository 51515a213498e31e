"""The admission path's slot router on the local Redis Cluster: routing, redirects, failover.

The limiter, policy and end-to-end tests run on the cluster too (parametrized).
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from taskhub.config.models import RedisSettings
from taskhub.store.clients import connect, is_unavailable
from taskhub.store.cluster_router import CrossSlotKeys, slot_of
from taskhub.store.connection import connection_settings
from tests.support.cluster import LocalCluster, Node
from tests.support.processes import wait_until

INCR = "return redis.call('INCR', KEYS[1])"


def tagged(name: str = "k") -> str:
    """A key in a slot of its own test (a fresh hash tag)."""
    return f"{{taskhub-test:{uuid.uuid4().hex[:10]}}}:{name}"


def node_id(node: Node) -> str:
    with node.client() as client:
        return client.execute_command("CLUSTER", "MYID").decode()


def read_on_replica(replica: Node, key: str) -> bytes | None:
    with replica.client() as client:
        client.execute_command("READONLY")
        return client.get(key)


def other_master(cluster: LocalCluster, master: Node) -> Node:
    for node in cluster.nodes:
        live = node.proc is not None and node is not master
        if live and node.info("replication")["role"] == "master":
            return node
    raise LookupError("no other master")


async def test_calls_run_on_the_master_of_their_slot(cluster, router) -> None:
    incr = router.script(INCR)
    keys = [tagged(str(i)) for i in range(12)]  # spread over the masters
    for key in keys:
        assert await incr([key], []) == 1
        with cluster.master_for_key(key).client() as client:
            assert client.get(key) == b"1"  # written where the slot lives, not elsewhere
    masters = {cluster.master_for_key(key).port for key in keys}
    assert len(masters) > 1


async def test_keys_of_one_call_in_two_slots_are_refused_before_sending(router) -> None:
    incr = router.script(INCR)
    with pytest.raises(CrossSlotKeys, match="different hash slots"):
        await incr(["{a}x", "{b}y"], [])
    assert slot_of(["{a}x", "{a}y", "a"]) == slot_of([b"a"])


async def test_ask_during_a_migration_then_moved_once_it_is_done(cluster, router) -> None:
    incr = router.script(INCR)
    key = tagged()
    assert await incr([key], []) == 1  # the map is read, the key lives on its master
    slot = slot_of([key])
    source = cluster.master_for_slot(slot)
    target = other_master(cluster, source)
    source_id, target_id = node_id(source), node_id(target)
    with source.client() as src, target.client() as dst:
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        # A key that has not moved yet is still served by the source ...
        assert await incr([key], []) == 2
        # ... one that is not there any more answers ASK, and runs on the target.
        fresh = key.replace(":k", ":fresh")
        assert await incr([fresh], []) == 1
        dst.execute_command("ASKING")  # the target serves an importing slot only after it
        assert dst.exists(fresh) == 1
        src.migrate("127.0.0.1", target.port, [key], 0, 5000)
        for client in (dst, src):  # the masters concerned; gossip tells the others
            client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
    # The router still sends the slot to the source, which answers MOVED: retried there.
    assert await incr([key], []) == 3
    with target.client() as client:
        assert client.get(key) == b"3"
    assert await incr([key], []) == 4


async def test_a_killed_master_fails_fast_then_its_promoted_replica_serves(cluster, router):
    incr = router.script(INCR)
    key = tagged()
    assert await incr([key], []) == 1
    master = cluster.master_for_key(key)
    replica = cluster.replica_of(master)
    assert wait_until(lambda: read_on_replica(replica, key) == b"1", 5)  # replicated
    cluster.kill(master)
    try:
        started = time.monotonic()
        with pytest.raises(Exception) as failed:
            await incr([key], [])
        assert is_unavailable(failed.value)  # -> BackendUnavailable, 503 upstream
        assert time.monotonic() - started < 1.0
        cluster.promote(replica, force=True)
        assert wait_until(cluster.healthy, 15, 0.1)
        deadline = time.monotonic() + 10
        while True:  # the next calls find the new master once the slot map is read again
            try:
                assert await incr([key], []) == 2
                break
            except Exception as exc:
                assert is_unavailable(exc), exc
                assert time.monotonic() < deadline, "the router did not follow the failover"
                await asyncio.sleep(0.05)
    finally:
        cluster.revive(master)  # as a replica of the promoted one: the cluster is whole


async def test_a_new_clients_first_commands_at_once_all_succeed(cluster: LocalCluster) -> None:
    """Ten scripts at once on a client that has not read the slot map yet, as a worker's
    schedulers or a burst of first requests send them. redis-py 7.4, with a socket
    timeout (taskhub always sets one), failed about one in thirty of them with
    "Connection closed by server" or an AttributeError; 25 new clients here."""
    settings = connection_settings(RedisSettings(url=cluster.url, cluster=True))
    failed: list[str] = []
    for _ in range(25):
        client = connect(settings)
        incr = client.register_script(INCR)
        keys = [tagged(f"k{n}") for n in range(10)]
        try:
            replies = await asyncio.gather(
                *(incr(keys=[key]) for key in keys), return_exceptions=True
            )
            failed += [f"{type(r).__name__}: {r}" for r in replies if isinstance(r, BaseException)]
            for key in keys:
                await client.delete(key)
        finally:
            await client.aclose()
    assert not failed, failed
