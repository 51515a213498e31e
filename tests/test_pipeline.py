"""The admission script's pipelined connection: batching, ordering, and every way it can fail."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter

import pytest
from redis.exceptions import AuthenticationError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from taskhub.config.models import RedisSettings
from taskhub.store.cluster_router import admission_pipeline
from taskhub.store.connection import connection_settings
from taskhub.store.pipeline import RedisPipeline, encode_command
from tests.support.redis_servers import PrivateRedis

INCR_BY = "return redis.call('INCRBY', KEYS[1], ARGV[1])"


def pipeline_for(url: str, **settings: float) -> RedisPipeline:
    pipeline = admission_pipeline(connection_settings(RedisSettings(url=url, **settings)))
    assert isinstance(pipeline, RedisPipeline)
    return pipeline


def test_commands_are_encoded_as_resp_arrays():
    assert encode_command(["SET", b"k", 7]) == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n7\r\n"
    assert encode_command(["é"]) == b"*1\r\n$2\r\n\xc3\xa9\r\n"


def test_the_embedded_redis_has_no_pipeline():
    assert admission_pipeline(connection_settings(RedisSettings(url="memory://"))) is None


async def test_calls_of_one_turn_leave_in_one_write_and_get_their_own_replies(redis_url, ns):
    pipeline = pipeline_for(redis_url)
    script = pipeline.script(INCR_BY)
    await script([f"{ns.prefix}:warm"], [1])  # connect first, so only the batch is counted
    writes: list[bytes] = []
    transport = pipeline._stream.transport
    real_write = transport.write
    transport.write = lambda data: (writes.append(data), real_write(data))[1]
    keys = [f"{ns.prefix}:k{i % 7}" for i in range(200)]
    replies = await asyncio.gather(*(script([key], [i]) for i, key in enumerate(keys)))
    await pipeline.close()
    assert len(writes) == 1
    totals: dict[str, int] = {}
    for i, (key, reply) in enumerate(zip(keys, replies, strict=True)):
        totals[key] = totals.get(key, 0) + i
        assert reply == totals[key]  # each call sees exactly the calls before it, in order


async def test_a_cancelled_caller_does_not_shift_the_replies_of_the_others(redis_url, ns):
    pipeline = pipeline_for(redis_url)
    script = pipeline.script(INCR_BY)
    await script([f"{ns.prefix}:warm"], [1])
    first = asyncio.ensure_future(script([f"{ns.prefix}:a"], [1]))
    second = asyncio.ensure_future(script([f"{ns.prefix}:b"], [5]))
    await asyncio.sleep(0)  # both are sent (or about to be) before the first is cancelled
    first.cancel()
    assert await second == 5
    assert await script([f"{ns.prefix}:a"], [1]) == 2  # the cancelled call had still run
    await pipeline.close()


async def test_an_error_reply_fails_only_its_own_call(redis_url, ns):
    pipeline = pipeline_for(redis_url)
    good = pipeline.script(INCR_BY)
    bad = pipeline.script("return redis.error_reply('ERR nope')")
    results = await asyncio.gather(
        good([f"{ns.prefix}:x"], [1]),
        bad([], []),
        good([f"{ns.prefix}:x"], [1]),
        return_exceptions=True,
    )
    await pipeline.close()
    assert results[0] == 1 and results[2] == 2
    assert isinstance(results[1], ResponseError) and "nope" in str(results[1])


async def test_a_script_redis_has_forgotten_is_loaded_again(private_redis: PrivateRedis):
    pipeline = pipeline_for(private_redis.url)
    script = pipeline.script(INCR_BY)
    assert await script(["k"], [1]) == 1
    private_redis.client().script_flush()
    assert await script(["k"], [1]) == 2
    await pipeline.close()


async def test_a_restarted_redis_fails_the_calls_in_flight_then_reconnects(
    private_redis: PrivateRedis,
):
    pipeline = pipeline_for(private_redis.url)
    script = pipeline.script(INCR_BY)
    assert await script(["k"], [1]) == 1
    private_redis.stop()
    with pytest.raises(RedisConnectionError):
        await script(["k"], [1])
    with pytest.raises(RedisConnectionError):  # still down: fails at once, no hang
        await script(["k"], [1])
    private_redis.start()
    assert await script(["k"], [3]) == 3  # a new, empty Redis; the script loaded again
    await pipeline.close()


async def test_a_redis_that_does_not_answer_times_out_every_call_in_flight(
    private_redis: PrivateRedis,
):
    pipeline = pipeline_for(private_redis.url, socket_timeout=0.3)
    script = pipeline.script(INCR_BY)
    assert await script(["k"], [1]) == 1
    private_redis.client().client_pause(1500)
    started = time.monotonic()
    results = await asyncio.gather(*(script(["k"], [1]) for _ in range(5)), return_exceptions=True)
    assert time.monotonic() - started < 1.2
    assert all(isinstance(r, RedisTimeoutError) for r in results), results
    await asyncio.sleep(1.3)
    assert await script(["k"], [0]) >= 1  # reconnected; the paused calls may have run
    await pipeline.close()


async def test_an_unreachable_redis_is_a_connection_error():
    pipeline = pipeline_for("redis://127.0.0.1:1/0", connect_timeout=1)
    with pytest.raises(RedisConnectionError, match="cannot connect"):
        await pipeline.script(INCR_BY)(["k"], [1])


async def test_callers_waiting_to_connect_share_one_attempt_and_its_timeout():
    """A host that accepts and never answers (as a stopped or dead master may): every call
    fails after one connect timeout, not one timeout per caller in turn."""
    server = await asyncio.start_server(lambda reader, writer: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pipeline = pipeline_for(f"redis://127.0.0.1:{port}/0", connect_timeout=0.3)
    script = pipeline.script(INCR_BY)  # loaded while connecting: the handshake hangs
    started = time.monotonic()
    results = await asyncio.gather(*(script(["k"], [1]) for _ in range(8)), return_exceptions=True)
    elapsed = time.monotonic() - started
    assert all(isinstance(r, RedisTimeoutError) for r in results), results
    assert elapsed < 0.3 * 3, elapsed  # one attempt for all eight (one each: 2.4 s)
    await pipeline.close()
    server.close()


async def test_password_and_database_from_the_url_are_used(private_redis: PrivateRedis):
    admin = private_redis.client()
    admin.config_set("requirepass", "s3cret-pass")
    try:
        url = f"redis://:s3cret-pass@127.0.0.1:{private_redis.port}/3"
        pipeline = pipeline_for(url)
        assert await pipeline.script(INCR_BY)(["in_db_3"], [4]) == 4
        await pipeline.close()
        wrong = pipeline_for(f"redis://:wrong-pass@127.0.0.1:{private_redis.port}/0")
        with pytest.raises(AuthenticationError, match="WRONGPASS"):
            await wrong.script(INCR_BY)(["k"], [1])
        await wrong.close()
        admin.execute_command("AUTH", "s3cret-pass")
        admin.select(3)
        assert admin.get("in_db_3") == b"4"
    finally:
        admin.execute_command("AUTH", "s3cret-pass")
        admin.config_set("requirepass", "")
        admin.close()


async def test_connections_killed_at_any_moment_never_leave_a_call_hanging(
    private_redis: PrivateRedis,
):
    """CLIENT KILL in a tight loop: between connect and call, mid-batch, mid-reply."""
    pipeline = pipeline_for(private_redis.url)
    script = pipeline.script(INCR_BY)
    stop = threading.Event()
    kills = 0

    def kill_forever() -> None:
        nonlocal kills
        admin = private_redis.client()
        while not stop.is_set():
            kills += admin.client_kill_filter(_type="normal", skipme=True)
            time.sleep(0.002)
        admin.close()

    killer = threading.Thread(target=kill_forever)
    killer.start()
    outcomes: Counter[str] = Counter()
    try:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            calls = [asyncio.wait_for(script(["k"], [1]), 3) for _ in range(32)]
            for result in await asyncio.gather(*calls, return_exceptions=True):
                outcomes[type(result).__name__] += 1
    finally:
        stop.set()
        killer.join()
    await pipeline.close()
    assert set(outcomes) <= {"int", "ConnectionError"}, outcomes  # no TimeoutError: no hang
    assert kills > 10 and outcomes["ConnectionError"] > 0 and outcomes["int"] > 0, outcomes
