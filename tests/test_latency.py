"""A slow Redis: a delaying proxy between taskhub and Redis (issue 16, "production Redis").

A real ``taskhub serve`` and ``taskhub worker`` reach a private Redis through
tests/support/delay_proxy.py, with ``socket_timeout=0.15`` in the URL, while
clients submit back to back, each submission with an Idempotency-Key of its own:

1. fast: no delay, every answer 200;
2. in time: 30 ms each way, a round trip well within the timeout: still 200;
3. jittery: 0-120 ms each way, over the timeout now and then: 200s and 503s, and
   many of those 503s ran on Redis all the same (their replies came too late);
4. slow: 100-500 ms each way: every answer a 503;
5. recovered: the delay removed, without restarting anything: 200 again.

Every 503 is well formed (Retry-After), every answer of any phase comes within
``socket_timeout`` and a margin, none is a 500, none is left hanging.

Each 503 is then retried with its key until it is admitted: a 503 whose script ran
all the same is found by its retry, and replayed. Then, read from Redis itself: the
queue holds exactly one job per submission that ended 200, each user's bucket was
charged exactly once per such job, and the worker completed each exactly once (the
file sink's lines).

``PYTEST_ARGS="-s -k test_latency" make test`` prints the figures.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from redis import asyncio as aioredis
from redis.exceptions import TimeoutError as RedisTimeoutError
from saq.job import Status

from taskhub.builtin.saq.redis_queue import Fence, HardenedRedisQueue, Move
from taskhub.store.connection import ConnectionSettings
from taskhub.store.pipeline import RedisPipeline
from taskhub.web.submission import idempotent_job_id
from tests.support.configs import config_dict
from tests.support.delay_proxy import NO_DELAY, Delay, ProxyProcess
from tests.support.jobs import store_queued
from tests.support.namespaces import Namespace
from tests.support.processes import TaskhubProcess, wait_until
from tests.support.redis_servers import PrivateRedis
from tests.support.replies import (
    TRANSPORT_ERROR,
    Reply,
    assert_503s_are_well_formed,
    assert_quiet,
    completions,
    submit,
)

SOCKET_TIMEOUT = 0.15  # seconds, in the URL: the longest a reply may take
# Seconds past the timeout within which a 503 must be out: the server's own work on a
# busy two-core machine. A hang (a reply matched to the wrong call, a call nobody
# fails) would take the client's own 10 s.
MARGIN = 0.5
IN_TIME: Delay = (0.03, 0.03)  # each way: a round trip of 60 ms, well within the timeout
# Each way: a round trip of 0-240 ms, over the timeout about one time in four. Calls that
# time out then often ran on Redis all the same (their replies were late, not lost).
JITTERY: Delay = (0.0, 0.12)
SLOW: Delay = (0.1, 0.5)  # each way: a round trip of at least 200 ms, over the timeout
PHASES: tuple[tuple[str, Delay, float], ...] = (  # name, delay each way, seconds
    ("fast", NO_DELAY, 2.0),
    ("in time", IN_TIME, 2.0),
    ("jittery", JITTERY, 3.0),
    ("slow", SLOW, 3.0),
    ("recovered", NO_DELAY, 3.0),
)
SETTLE = 1.0  # seconds after the delay ends before every answer must be 200 again
CLIENTS = 6
USERS = 25
CAPACITY = 10_000  # no 429s: every submission is meant to be admitted
HEARTBEAT = 5  # longer than the slow phase: a live worker's jobs are never swept


@dataclass
class Phase:
    name: str
    delay: Delay
    seconds: float
    start: float = 0.0  # monotonic, once the proxy applies its delay
    end: float = 0.0  # once the next phase's delay applies
    replies: list[Reply] = field(default_factory=list)  # sent and answered in the phase


@pytest.fixture
def proxy(private_redis: PrivateRedis) -> Iterator[ProxyProcess]:
    proxy = ProxyProcess(("127.0.0.1", private_redis.port)).start()
    yield proxy
    proxy.stop()


async def run_phases(url: str, proxy: ProxyProcess) -> tuple[list[Phase], list[Reply]]:
    """CLIENTS clients submitting back to back through every phase, each with a new key;
    a request in flight across a change of delay belongs to no phase."""
    phases = [Phase(*phase) for phase in PHASES]
    replies: list[Reply] = []
    done = asyncio.Event()
    counter = itertools.count()

    async def client() -> None:
        async with httpx.AsyncClient(timeout=10) as http:
            while not done.is_set():
                n = next(counter)
                replies.append(await submit(http, url, f"u{n % USERS}", f"k{n}"))

    async def switch() -> None:
        for phase in phases:
            await asyncio.to_thread(proxy.delay, phase.delay, phase.delay)
            phase.start = time.monotonic()
            await asyncio.sleep(phase.seconds)
            phase.end = time.monotonic()
        done.set()

    await asyncio.gather(switch(), *(client() for _ in range(CLIENTS)))
    for phase in phases:
        phase.replies = [r for r in replies if phase.start < r.sent and r.answered < phase.end]
    return phases, replies


async def decide(url: str, undecided: list[Reply]) -> list[Reply]:
    """Each 503 again with its key, until it is admitted (or 10 s pass)."""
    finals = []
    async with httpx.AsyncClient(timeout=10) as http:
        for reply in undecided:
            deadline = time.monotonic() + 10
            while True:
                again = await submit(http, url, reply.user, reply.key)
                if again.status == 200 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)
            finals.append(again)
    return finals


def test_a_slow_redis_answers_503_in_time_admits_nothing_twice_and_recovers(
    tmp_path: Path, private_redis: PrivateRedis, proxy: ProxyProcess, spawn
) -> None:
    ns = Namespace.new()
    url = f"redis://{proxy.address}/0?socket_timeout={SOCKET_TIMEOUT}&socket_connect_timeout=1"
    limiter = {"type": "token_bucket", "capacity": CAPACITY, "refill": 1, "period": 86_400}
    queue = {"type": "saq", "name": ns.queue, "heartbeat": HEARTBEAT, "sweep_interval": 1}
    config = config_dict(ns, url, limiter=limiter, queue=queue)
    server: TaskhubProcess = spawn(config, "serve", cwd=tmp_path / "server")
    worker: TaskhubProcess = spawn(
        config, "worker", cwd=tmp_path / "worker", wait_for="started (worker)"
    )

    phases, replies = asyncio.run(run_phases(server.url, proxy))
    fast, in_time, jittery, slow, recovered = phases
    statuses = {phase.name: Counter(r.status for r in phase.replies) for phase in phases}
    undecided = [r for r in replies if r.status != 200]
    finals = asyncio.run(decide(server.url, undecided))
    replayed = sum(1 for r in finals if r.replayed)

    # Every submission ends 200, each with the job its key stands for.
    decided = [r for r in replies if r.status == 200] + finals
    assert all(r.status == 200 for r in decided), Counter(r.status for r in finals)
    admitted = {r.job_id for r in decided}
    assert len(admitted) == len(replies)
    assert all(r.job_id == idempotent_job_id(r.user, r.key) for r in decided)

    log = tmp_path / "worker" / "task.log"
    wait_until(lambda: admitted <= set(completions(log)), 30, interval=0.2)
    time.sleep(1.0)  # a second run of a job, if there were one, has time to show up
    lines = completions(log)
    client = private_redis.client()
    stored = {key.decode().rsplit(":", 1)[1] for key in client.scan_iter(f"saq:job:{ns.queue}:*")}
    took = sorted(r.answered - r.sent for r in replies)
    traffic = proxy.traffic()
    slow_took = sorted(r.answered - r.sent for r in slow.replies)
    print(
        f"\nslow redis: requests={len(replies)} "
        f"by phase={ {name: dict(sorted(c.items())) for name, c in statuses.items()} } "
        f"503s retried={len(undecided)} (ran on Redis anyway, replayed={replayed}) "
        f"jobs stored={len(stored)} completions={sum(lines.values())} "
        f"slow 503s took median={slow_took[len(slow_took) // 2]:.3f} s "
        f"max={slow_took[-1]:.3f} s; any answer max={took[-1]:.3f} s "
        f"proxy connections={traffic.connections} bytes to redis={traffic.to_server} "
        f"to taskhub={traffic.to_client}"
    )

    # 1, 2: a fast Redis, and one slow within the timeout, admit everything.
    assert fast.replies and set(statuses["fast"]) == {200}, statuses
    assert in_time.replies and set(statuses["in time"]) == {200}, statuses
    # 3: now and then over the timeout: some 200s, some 503s, nothing else.
    assert {r.status for r in jittery.replies} == {200, 503}, statuses
    # 4: always over the timeout: every answer is a 503.
    assert slow.replies and set(statuses["slow"]) == {503}, statuses
    assert_503s_are_well_formed(replies)  # each with Retry-After
    # Nothing hangs: every answer, in any phase or across a change, came in time.
    assert all(r.status != TRANSPORT_ERROR for r in replies)
    assert took[-1] <= SOCKET_TIMEOUT + MARGIN, took[-5:]
    # 5: back to 200 once the delayed bytes are through, without a restart.
    settled = [r for r in recovered.replies if r.sent > recovered.start + SETTLE]
    assert settled and all(r.status == 200 for r in settled), Counter(r.status for r in settled)

    # From Redis: one job per admitted submission, nothing else stored.
    assert stored == admitted, (len(stored - admitted), len(admitted - stored))
    # Each user's bucket charged once per admitted job (a day's refill is 1 token).
    per_user = Counter(r.user for r in decided)
    for user, count in per_user.items():
        tokens = float(client.hget(f"{ns.prefix}:token_bucket:tb:{user}", "tokens") or -1)
        assert abs(CAPACITY - count - tokens) < 0.01, (user, count, tokens)
    # Every admitted job completed, exactly once, and nothing else ran.
    assert set(lines) == admitted, (len(set(lines) - admitted), len(admitted - set(lines)))
    assert max(lines.values()) == 1, [job for job, n in lines.items() if n > 1]
    assert client.llen(f"saq:{ns.queue}:queued") == 0
    assert client.llen(f"saq:{ns.queue}:active") == 0
    client.close()
    # An outage is a warning when it starts and when it ends, not an error per request.
    assert_quiet(server)
    assert worker.stop() == 0
    assert_quiet(worker)


async def test_a_workers_claim_and_outcome_are_asked_again_until_a_slow_redis_answers(
    private_redis: PrivateRedis, proxy: ProxyProcess
) -> None:
    """The worker's steps on its pipelined connection, through the proxy: while Redis is
    slower than ``socket_timeout``, a claim and then a completion time out (each may
    have run, its reply late) and are asked again until Redis answers. The claim uses
    one attempt, the completion is recorded once and the job leaves the active list:
    before, the worker gave the claimed job up to the sweep (an attempt used for
    nothing) and its completed job ran again."""
    settings = ConnectionSettings("redis", "127.0.0.1", proxy.port, socket_timeout=0.1)
    scripts = RedisPipeline(settings)
    redis = aioredis.Redis(port=private_redis.port)
    queue = HardenedRedisQueue(redis, "slow", 10, 60, scripts=scripts)
    await queue.connect()
    job_id = await store_queued(queue, function="log_completion", kwargs={"user_id": "u"})
    taken = await queue.take(1)
    assert taken is not None
    job, raw = taken

    async def slowly(step: Callable[[], Awaitable[bool]]) -> bool:
        """``step`` asked while Redis is slow, then answered once it is fast again."""
        await asyncio.to_thread(proxy.delay, SLOW, SLOW)
        asking = asyncio.create_task(step())
        await asyncio.sleep(1.0)
        assert not asking.done()  # every ask so far timed out
        await asyncio.to_thread(proxy.delay)
        return await asyncio.wait_for(asking, 5)

    assert await slowly(lambda: queue.claim(job, raw, "worker-1", persist=10))
    job.status, job.completed = Status.COMPLETE, 1
    fence = queue.run_fence(job)
    assert await slowly(lambda: queue.move(job, Move.FINISH, Fence.RUN, fence, persist=10))
    await asyncio.sleep(SLOW[1] * 2)  # the late copies of the lost asks are in
    done = queue.deserialize(await redis.get(job_id))
    assert done is not None and done.status == Status.COMPLETE and done.attempts == 1
    assert await redis.llen(queue._active) == 0 and await redis.llen(queue._queued) == 0
    assert await redis.zcard(queue._incomplete) == 0 and await redis.zcard(queue.beats_key) == 0
    assert proxy.traffic().connections > 3  # each timeout dropped its connection
    await scripts.close()
    await queue.disconnect()


async def test_a_reply_that_comes_after_its_call_timed_out_is_nobodys(
    private_redis: PrivateRedis, proxy: ProxyProcess
) -> None:
    """On the admission pipeline: a call whose reply is late fails with TimeoutError and
    takes its connection with it, so its late reply can never be read as the next
    call's; and the late call did run (a 503 may have been admitted)."""
    pipeline = RedisPipeline(
        ConnectionSettings("redis", "127.0.0.1", proxy.port, socket_timeout=0.1)
    )
    incr = pipeline.script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
    assert await incr(["b"], [0]) == 0  # connected, the script loaded
    await asyncio.to_thread(proxy.delay, NO_DELAY, (0.3, 0.3))  # only the replies are late
    with pytest.raises(RedisTimeoutError):
        await incr(["a"], [1000])
    await asyncio.to_thread(proxy.delay)
    assert await incr(["b"], [1]) == 1  # its own reply, not the late 1000
    await asyncio.sleep(0.5)
    assert await incr(["b"], [1]) == 2
    redis = private_redis.client()
    assert redis.get("a") == b"1000"  # the timed-out call ran all the same
    redis.close()
    await pipeline.close()
