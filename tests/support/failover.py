"""A master killed under load, and what clients must have seen: shared by the failover
tests on a Redis Cluster (test_failover.py) and on Redis Sentinel (test_sentinel.py).

Clients submit back to back, each request for a user of its own, while another
thread kills the master and waits until its replica says it is master. Then
``check`` asserts, of the replies and the worker's completions:

- the server answers 503 with Retry-After, never 500, and never takes longer
  than the configured Redis timeouts to answer; ``/ready`` says not ready and why;
- once the replica serves, 200s come back, with neither process restarted;
- every job admitted before the kill, and every job admitted after it (sent once the
  old master was dead, so only the new one can have taken it), completes; the ones
  admitted after the kill exactly once.

Redis replicates asynchronously: a job acknowledged in the last moments before
the kill may never have reached the replica. Those whose 200 came less than
``REPLICATION_WINDOW`` before the kill are exempt from "completes"; ``check``
counts how many there were and how many were lost, and prints the figures.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.support.processes import wait_until
from tests.support.replies import Reply, assert_503s_are_well_formed, completions, submit

CLIENTS = 12
WARM_UP = 1.5  # seconds of load before the kill
AFTER = 2.5  # seconds of load once the replica serves
PROMOTION_TIMEOUT = 15.0  # both promote in about 2-4 s with their 1-1.5 s timeouts
RECOVERY = 5.0  # seconds after the promotion by which the server admits again
SETTLED = 1.0  # ... and after which it answers nothing but 200
CONNECT_TIMEOUT = SOCKET_TIMEOUT = 1.0
SLACK = 1.5  # what a loaded 2-core machine may add to an answer
REPLICATION_WINDOW = 0.25  # seconds: 200s this close before the kill may be lost


@dataclass
class Switch:
    """The failover's moments, on the monotonic clock."""

    killed: float = 0.0  # just before SIGKILL
    promoted: float = 0.0  # the replica says it is a master
    ready: list[tuple[float, int, dict[str, Any]]] = field(default_factory=list)


def kill_and_wait_for_promotion(
    kill: Callable[[], None], promoted: Callable[[], bool], switch: Switch
) -> None:
    time.sleep(WARM_UP)
    switch.killed = time.monotonic()
    kill()
    assert wait_until(promoted, PROMOTION_TIMEOUT, 0.02), "the replica was not promoted"
    switch.promoted = time.monotonic()
    time.sleep(AFTER)


async def load(url: str, done: threading.Event) -> list[Reply]:
    """CLIENTS clients submitting back to back, each request for a new user."""
    replies: list[Reply] = []
    users = itertools.count()

    async def client(http: httpx.AsyncClient) -> None:
        while not done.is_set():
            replies.append(await submit(http, url, f"u{next(users)}", None))

    async with httpx.AsyncClient(timeout=10) as http:
        await asyncio.gather(*(client(http) for _ in range(CLIENTS)))
    return replies


async def probe_ready(url: str, done: threading.Event, switch: Switch) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        while not done.is_set():
            response = await http.get(f"{url}/ready")
            switch.ready.append((time.monotonic(), response.status_code, response.json()))
            await asyncio.sleep(0.1)


async def run_through_failover(
    url: str, kill: Callable[[], None], promoted: Callable[[], bool]
) -> tuple[list[Reply], Switch]:
    """Load on the server at ``url`` while ``kill`` ends the master and ``promoted``
    says when its replica took over."""
    switch, done = Switch(), threading.Event()

    async def failover() -> None:
        try:
            await asyncio.to_thread(kill_and_wait_for_promotion, kill, promoted, switch)
        finally:
            done.set()

    replies, *_ = await asyncio.gather(load(url, done), probe_ready(url, done, switch), failover())
    return replies, switch


def check(replies: list[Reply], switch: Switch, log: Path, name: str = "failover") -> None:
    statuses = Counter(r.status for r in replies)
    assert set(statuses) <= {200, 503}, statuses  # no 500, no 429, no dropped client
    assert_503s_are_well_formed(replies)
    slowest = max(r.answered - r.sent for r in replies)
    assert slowest < CONNECT_TIMEOUT + SOCKET_TIMEOUT + SLACK, f"an answer took {slowest:.2f} s"

    # During the switch: 503s. A 200 there can only come from the new master (the old one
    # is SIGKILLed, so nothing sent after the kill reaches it): the test sees the promotion
    # late when its watcher thread waits for the GIL behind the load. Such jobs must
    # complete like those admitted after it (``after`` below).
    during = [r for r in replies if switch.killed < r.sent and r.answered < switch.promoted]
    assert any(r.status == 503 for r in during), Counter(r.status for r in during)
    recovered = min(
        (r.answered for r in replies if r.status == 200 and r.sent > switch.promoted),
        default=None,
    )
    assert recovered is not None, "no 200 after the promotion"
    assert recovered - switch.promoted < RECOVERY
    late = [r for r in replies if r.sent > recovered + SETTLED]
    assert late and all(r.status == 200 for r in late), Counter(r.status for r in late)

    # /ready: not ready with a reason during the switch, ready again after
    down = [body for at, status, body in switch.ready if status == 503]
    assert down and all(body["reason"] for body in down), switch.ready
    assert switch.ready[-1][1] == 200, switch.ready[-1]

    before = {r.job_id for r in replies if r.status == 200 and r.answered < switch.killed}
    window = {
        r.job_id
        for r in replies
        if r.status == 200
        and r.answered >= switch.killed - REPLICATION_WINDOW
        and r.sent <= switch.killed
    }
    after = {r.job_id for r in replies if r.status == 200 and r.sent > switch.killed}
    must = (before - window) | after
    wait_until(lambda: must <= set(completions(log)), 30, interval=0.2)
    time.sleep(0.5)  # a second run of a job, if there were one, has time to show up
    lines = completions(log)
    duplicates = {job for job, n in lines.items() if n > 1}
    print(
        f"\n{name}: requests={len(replies)} by status={dict(sorted(statuses.items()))} "
        f"admitted before the kill={len(before)} (of which in the last "
        f"{REPLICATION_WINDOW * 1000:.0f} ms={len(window)}, lost={len(window - set(lines))}) "
        f"after recovery={len(after)} promotion after {switch.promoted - switch.killed:.2f} s "
        f"first 200 after {recovered - switch.killed:.2f} s slowest answer={slowest:.2f} s "
        f"completed={len(set(lines) & (before | after))} run twice={len(duplicates)} "
        f"ready probes not ready={len(down)}"
    )
    assert must <= set(lines), f"{len(must - set(lines))} admitted jobs never completed"
    assert not duplicates & after, "a job admitted after recovery ran twice"
