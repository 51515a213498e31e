"""Faults around admission, through real processes on a private Redis with AOF.

- Redis restarted mid-load: while clients keep submitting, Redis is stopped
  (SIGTERM, then SIGKILL), kept down, and started again. The server answers 503
  meanwhile, never 500, recovers by itself, and every 200 completes once a
  worker drains the queue. No 429 runs, and a 503 only if Redis went away
  while its request was in flight (the script ran, the answer was lost).
- A client that hangs up while Redis is slow is logged at INFO, not as an error.
- Dropped connections: the server's Redis connections are killed (CLIENT KILL)
  over and over, and Redis itself twice, while clients submit with an
  Idempotency-Key and retry until they get 200 or 429. Afterwards the queue
  holds exactly the submissions that ended 200, once each, and each user's
  bucket was charged exactly once per 200.

``PYTEST_ARGS="-s -k test_faults" make test`` prints the figures.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis

from taskhub.web.submission import idempotent_job_id
from tests.support.configs import config_dict, crash_queue
from tests.support.namespaces import Namespace
from tests.support.processes import wait_until
from tests.support.redis_servers import PrivateRedis
from tests.support.replies import (
    Reply,
    assert_503s_are_well_formed,
    assert_quiet,
    completions,
    submit,
)

# --------------------------------------------------------------------------- Redis restarted

HEAVY_USERS = 3  # every fifth request is theirs: 3 admitted each, then 429s
CAPACITY = 3
CLIENTS = 8
WARM_UP, DOWN, UP = 1.5, 1.5, 2.0  # seconds: before the first stop, down, up again


@dataclass
class Outage:
    """One stop (or kill) and start of Redis, on the monotonic clock."""

    how: str
    signalled: float = 0.0  # just before the signal
    dead: float = 0.0  # the process has exited
    starting: float = 0.0  # just before the restart
    up: float = 0.0  # it answers PING again

    def contains(self, reply: Reply) -> bool:
        """Sent after Redis died and answered before it was started again."""
        return reply.sent > self.dead and reply.answered < self.starting

    def straddles(self, reply: Reply) -> bool:
        """In flight at the moment Redis went away: its response may have been lost."""
        return reply.sent < self.dead and reply.answered > self.signalled


def stop_and_restart(private: PrivateRedis) -> list[Outage]:
    outages = []
    time.sleep(WARM_UP)
    for how in (private.stop, private.kill):
        outage = Outage(how.__name__, signalled=time.monotonic())
        how()
        outage.dead = time.monotonic()
        time.sleep(DOWN)
        outage.starting = time.monotonic()
        private.start()
        outage.up = time.monotonic()
        outages.append(outage)
        time.sleep(UP)
    return outages


def restart_request(n: int) -> tuple[str, str | None]:
    """The user and Idempotency-Key (every other request) of the ``n``-th request."""
    user = f"heavy{n % HEAVY_USERS}" if n % 5 == 0 else f"user{n}"
    return user, (f"r{n}" if n % 2 else None)


async def submit_until(url: str, done: asyncio.Event) -> list[Reply]:
    """CLIENTS clients submitting back to back until ``done``."""
    replies: list[Reply] = []
    counter = itertools.count()

    async def client() -> None:
        async with httpx.AsyncClient(timeout=10) as http:
            while not done.is_set():
                replies.append(await submit(http, url, *restart_request(next(counter))))

    await asyncio.gather(*(client() for _ in range(CLIENTS)))
    return replies


def test_redis_restarted_mid_load_answers_503_and_loses_no_admitted_job(
    tmp_path: Path, aof_redis: PrivateRedis, spawn
) -> None:
    ns = Namespace.new()
    config = config_dict(
        ns,
        aof_redis.url,
        limiter={"type": "token_bucket", "capacity": CAPACITY, "refill": 1, "period": 86_400},
        queue=crash_queue(ns),
    )
    server = spawn(config, "serve", cwd=tmp_path / "server")
    worker = spawn(config, "worker", cwd=tmp_path / "worker", wait_for="started (worker)")

    async def load() -> tuple[list[Reply], list[Outage]]:
        done = asyncio.Event()

        async def outages() -> list[Outage]:
            try:
                return await asyncio.to_thread(stop_and_restart, aof_redis)
            finally:
                done.set()

        return await asyncio.gather(submit_until(server.url, done), outages())

    replies, outages = asyncio.run(load())
    statuses = Counter(r.status for r in replies)
    admitted = {r.job_id for r in replies if r.status == 200}
    log = tmp_path / "worker" / "task.log"
    wait_until(lambda: admitted <= set(completions(log)), 30, interval=0.2)
    time.sleep(0.5)  # a stray completion, if there were one, has time to show up
    lines = completions(log)
    strays = set(lines) - admitted
    in_flight = [r for r in replies if r.status == 503 and any(o.straddles(r) for o in outages)]
    print(
        f"\nredis restart: requests={len(replies)} "
        f"by status={dict(sorted(statuses.items()))} admitted={len(admitted)} "
        f"completed={len(admitted & set(lines))} lost={len(admitted - set(lines))} "
        f"duplicates={sum(1 for n in lines.values() if n > 1)} "
        f"503s in flight when Redis went={len(in_flight)} (of which ran anyway={len(strays)}) "
        f"outages={[(o.how, round(o.starting - o.dead, 1)) for o in outages]}"
    )

    assert set(statuses) <= {200, 429, 503}, statuses  # no 500, no dropped client
    assert_503s_are_well_formed(replies)
    assert len(admitted) == statuses[200]  # every 200 names a job of its own
    for reply in replies:
        if reply.key is not None and reply.status == 200:
            assert reply.job_id == reply.expected_id
    ends = [o.signalled for o in outages[1:]] + [float("inf")]  # where each recovery ends
    for outage, until in zip(outages, ends, strict=True):
        during = Counter(r.status for r in replies if outage.contains(r))
        assert during[503] > 0 and during[200] == 0, (outage, during)
        after = [r for r in replies if outage.up < r.sent and r.answered < until]
        assert any(r.status == 200 for r in after), f"no 200 after the {outage.how}"
    assert admitted <= set(lines), f"{len(admitted - set(lines))} admitted jobs never completed"
    # A refused or failed submission runs only if its response was lost in flight.
    refused_ids = {r.expected_id for r in replies if r.key and r.status != 200}
    assert not (refused_ids & set(lines)) - {r.expected_id for r in in_flight}
    assert len(strays) <= len(in_flight), strays
    # each outage logged once when it starts and once when it ends, not per request
    assert server.output.count("Redis (admission) is unreachable") == len(outages)
    assert server.output.count("Redis (admission) is reachable again") == len(outages)
    assert_quiet(server)
    assert worker.stop() == 0
    assert_quiet(worker)


# --------------------------------------------------------------------------- dropped connections

USERS = 400
SUBMISSIONS = 6  # logical submissions per user, each with an Idempotency-Key of its own
ALLOWED = 4  # the bucket's capacity: 4 of each user's 6 end 200, 2 end 429
LOAD_SECONDS = 8.0  # the submissions start spread over this long
REDIS_KILLS = 2  # Redis itself is SIGKILLed and restarted this often during the load


@dataclass
class Submission:
    """One logical submission and every attempt it took to get 200 or 429."""

    user: str
    key: str
    replies: list[Reply] = field(default_factory=list)

    @property
    def final(self) -> Reply:
        return self.replies[-1]

    @property
    def job_id(self) -> str:
        job_id = idempotent_job_id(self.user, self.key)
        assert job_id is not None
        return job_id


async def submit_until_decided(http: httpx.AsyncClient, url: str, sub: Submission) -> None:
    """Retry a submission, same key, until it is admitted or refused (or 20 s pass)."""
    deadline = time.monotonic() + 20
    while True:
        reply = await submit(http, url, sub.user, sub.key)
        sub.replies.append(reply)
        if reply.status in (200, 429) or time.monotonic() > deadline:
            return
        await asyncio.sleep(0.02)


async def submit_all(url: str, subs: list[Submission]) -> None:
    pace = LOAD_SECONDS / len(subs)
    start = time.monotonic()
    gate = asyncio.Semaphore(32)

    async def one(http: httpx.AsyncClient, index: int, sub: Submission) -> None:
        await asyncio.sleep(max(0.0, start + index * pace - time.monotonic()))
        async with gate:
            await submit_until_decided(http, url, sub)

    async with httpx.AsyncClient(timeout=10) as http:
        await asyncio.gather(*(one(http, i, sub) for i, sub in enumerate(subs)))


@dataclass
class Killer:
    """Kills every normal client connection of ``target``, over and over, until stopped."""

    target: PrivateRedis
    stop: threading.Event = field(default_factory=threading.Event)
    calls: int = 0  # CLIENT KILL calls that found a connection to kill
    killed: int = 0  # connections killed
    restarts: int = 0

    def run(self) -> None:
        rng = random.Random(7)
        client = self.target.client()
        started = time.monotonic()
        while not self.stop.is_set():
            if self.restarts < REDIS_KILLS and time.monotonic() - started > (
                (self.restarts + 1) * LOAD_SECONDS / (REDIS_KILLS + 1)
            ):
                self.target.kill()
                time.sleep(0.5)
                self.target.start()
                self.restarts += 1
            try:
                killed = client.client_kill_filter(_type="normal")
            except redis.ConnectionError:
                continue  # our own connection went with a restart; the next call reconnects
            self.calls += killed > 0
            self.killed += killed
            time.sleep(rng.uniform(0.002, 0.01))
        client.close()


def test_dropped_connections_charge_and_queue_each_admitted_submission_once(
    tmp_path: Path, aof_redis: PrivateRedis, spawn
) -> None:
    ns = Namespace.new()
    limiter = {"type": "token_bucket", "capacity": ALLOWED, "refill": 1, "period": 86_400}
    config = config_dict(ns, aof_redis.url, limiter=limiter)
    server = spawn(config, "serve", cwd=tmp_path / "server")  # no worker: the queue is the ledger
    subs = [Submission(f"u{u}", f"order-{u}-{i}") for u in range(USERS) for i in range(SUBMISSIONS)]
    random.Random(277).shuffle(subs)
    killer = Killer(aof_redis)

    async def load() -> None:
        killing = asyncio.create_task(asyncio.to_thread(killer.run))
        try:
            await submit_all(server.url, subs)
        finally:
            killer.stop.set()
            await killing

    asyncio.run(load())
    replies = [reply for sub in subs for reply in sub.replies]
    statuses = Counter(r.status for r in replies)
    admitted = {sub.job_id: sub for sub in subs if sub.final.status == 200}
    refused = {sub.job_id for sub in subs if sub.final.status == 429}
    recovered = sum(1 for sub in subs if sub.final.status == 200 and sub.final.replayed)
    outage_lines = server.output.count("Redis (admission) is unreachable")
    client = aof_redis.client()
    queued = [
        key.decode().rsplit(":", 1)[1] for key in client.lrange(f"saq:{ns.queue}:queued", 0, -1)
    ]
    print(
        f"\ndropped connections: submissions={len(subs)} requests={len(replies)} "
        f"by status={dict(sorted(statuses.items()))} admitted={len(admitted)} "
        f"refused={len(refused)} queued={len(queued)} "
        f"duplicates={len(queued) - len(set(queued))} lost={len(set(admitted) - set(queued))} "
        f"strays={len(set(queued) - set(admitted))} lost responses recovered by replay={recovered} "
        f"connection kills={killer.killed} (in {killer.calls} CLIENT KILL calls) "
        f"redis kills={killer.restarts} outage log lines={outage_lines}"
    )

    assert set(statuses) <= {200, 429, 503}, statuses  # no 500, no dropped client
    assert_503s_are_well_formed(replies)
    assert len(admitted) + len(refused) == len(subs), "some submissions never got 200 or 429"
    for job_id, sub in admitted.items():
        assert sub.final.job_id == job_id
    # the queue holds each admitted submission exactly once, and nothing else
    assert len(queued) == len(set(queued)) and set(queued) == set(admitted)
    assert client.zcard(f"saq:{ns.queue}:incomplete") == len(admitted)
    assert not any(client.exists(f"saq:job:{ns.queue}:{job_id}") for job_id in refused)
    # each 200 charged its user's bucket exactly once: every user got exactly its capacity
    per_user = Counter(sub.user for sub in admitted.values())
    assert set(per_user.values()) == {ALLOWED} and len(per_user) == USERS, per_user
    for user in per_user:
        tokens = float(client.hget(f"{ns.prefix}:token_bucket:tb:{user}", "tokens"))
        assert abs(tokens) < 0.01, (user, tokens)  # 4 taken of 4; a day's refill is 1
    assert killer.calls > 0 and killer.restarts == REDIS_KILLS
    asyncio.run(assert_replays(server.url, subs))
    assert client.llen(f"saq:{ns.queue}:queued") == len(admitted)  # the replays queued nothing
    assert_quiet(server)
    # about one line per Redis kill, not one per dropped connection
    assert outage_lines <= 10, server.output
    client.close()


async def assert_replays(url: str, subs: list[Submission]) -> None:
    """Retried once more, with its user now over the limit (and refused just before, so
    the server's deny cache knows it), an admitted submission still answers 200 with
    its job id, and a refused one 429."""
    users = sorted({sub.user for sub in subs})[:10]
    async with httpx.AsyncClient(timeout=10) as http:
        for user in users:
            fresh = await submit(http, url, user, None)
            assert fresh.status == 429, fresh
            for sub in (sub for sub in subs if sub.user == user):
                again = await submit(http, url, sub.user, sub.key)
                assert again.status == sub.final.status, (sub, again)
                if again.status == 200:
                    assert again.job_id == sub.job_id and again.replayed, again


# --------------------------------------------------------------------------- a client hangs up


def test_a_client_that_hangs_up_mid_request_is_no_error(private_redis: PrivateRedis, spawn) -> None:
    server = spawn(config_dict(Namespace.new(), private_redis.url), "serve")
    assert private_redis.proc is not None
    private_redis.proc.send_signal(signal.SIGSTOP)  # admission waits (up to socket_timeout, 2 s)
    try:
        with pytest.raises(httpx.TimeoutException):
            httpx.post(f"{server.url}/task", json={"user_id": "impatient"}, timeout=0.5)
        assert server.wait_for("client hung up before the answer to POST /task", 5)
    finally:
        private_redis.proc.send_signal(signal.SIGCONT)

    def admits() -> bool:
        return httpx.post(f"{server.url}/task", json={"user_id": "next"}).status_code == 200

    assert wait_until(admits, 5)
    assert_quiet(server)
