"""The fairness row: ``queue.fairness: user`` (A) against FIFO (B) on the private Redis.

Two figures, each from a worker run in this process (the same code a ``taskhub
worker`` runs, without a sink, so the queue's own cost is what differs):

- the light user's wait: a heavy user queues 400 jobs of a 20 ms task, a worker of
  concurrency 4 starts on them, then a light user submits one job; milliseconds from
  that submission to its start (issue 17's scenario; target 300 ms with fairness);
- drain throughput: 10,000 jobs of a task that does nothing, from 100 users in turn,
  drained by one worker of concurrency 50; jobs/s from the worker's start until the
  last job is finished, fair over FIFO (target 0.8x).
"""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from bench.measure import Metric, summarize
from taskhub import Task, TaskHandler
from taskhub.builtin.saq.queue import SaqQueue
from taskhub.components import TaskSpec
from taskhub.config.models import RedisSettings
from taskhub.limits.admission import Admission
from taskhub.limits.policy import RequestContext
from taskhub.store.clients import connect
from tests.support.jobs import working

if TYPE_CHECKING:
    from bench.rows import Bench, Figures

QUEUE = "fairness"
HEAVY_JOBS, TASK_S, CONCURRENCY = 400, 0.02, 4
DRAIN_JOBS, DRAIN_USERS, DRAIN_CONCURRENCY = 10_000, 100, 50
BATCH = 50  # admissions at once: each takes a connection from the pool
MODES = {"A": "user", "B": "none"}


class Sleeper(TaskHandler):
    """Sleeps ``seconds``; notes each job's start (monotonic s) by user."""

    name = "sleeper"

    def __init__(self, seconds: float) -> None:
        super().__init__(TaskHandler.Config())
        self.seconds = seconds
        self.started: list[tuple[str, float]] = []

    async def run(self, task: Task) -> None:
        self.started.append((task.user_id, time.monotonic()))
        if self.seconds:
            await asyncio.sleep(self.seconds)


async def until(check: Any, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("the fairness row's worker made no progress")
        await asyncio.sleep(0.002)


async def admit_all(admission: Admission, spec: TaskSpec, users: list[str]) -> None:
    for start in range(0, len(users), BATCH):
        await asyncio.gather(
            *(
                admission.admit(spec, RequestContext(user, spec.name), None)
                for user in users[start : start + BATCH]
            )
        )


async def light_wait(url: str, fairness: str) -> Figures:
    settings = RedisSettings(url=url)
    client = connect(settings)
    handler = Sleeper(TASK_S)
    spec = TaskSpec(Sleeper.name, handler)
    queue = SaqQueue(SaqQueue.Config(name=QUEUE, fairness=fairness, concurrency=CONCURRENCY))
    await queue.open(SimpleNamespace(redis=client))  # type: ignore[arg-type]
    admission = Admission(client, [], queue, "bench")
    try:
        await admit_all(admission, spec, ["heavy"] * HEAVY_JOBS)
        async with working(queue, spec, settings):
            await until(lambda: len(handler.started) >= 2 * CONCURRENCY)
            submitted = time.monotonic()
            await admission.admit(spec, RequestContext("light", spec.name), None)
            await until(lambda: any(user == "light" for user, _ in handler.started))
    finally:
        await client.aclose()
    users = [user for user, _ in handler.started]
    at = users.index("light")
    return {
        "wait_ms": (handler.started[at][1] - submitted) * 1000,
        "heavy_before": at,
    }


async def drain(url: str, fairness: str) -> Figures:
    settings = RedisSettings(url=url)
    client = connect(settings)
    handler = Sleeper(0)
    spec = TaskSpec(Sleeper.name, handler)
    config = SaqQueue.Config(name=QUEUE, fairness=fairness, concurrency=DRAIN_CONCURRENCY)
    queue = SaqQueue(config)
    await queue.open(SimpleNamespace(redis=client))  # type: ignore[arg-type]
    admission = Admission(client, [], queue, "bench")
    users = [f"u{n % DRAIN_USERS}" for n in range(DRAIN_JOBS)]
    try:
        await admit_all(admission, spec, users)
        started = time.monotonic()
        async with working(queue, spec, settings):
            while (await queue.depth())["incomplete"] > 0:
                await asyncio.sleep(0.005)
            elapsed = time.monotonic() - started
    finally:
        await client.aclose()
    return {"jobs": DRAIN_JOBS, "seconds": elapsed, "jobs_per_s": DRAIN_JOBS / elapsed}


def fairness(bench: Bench) -> list[Metric]:
    """Both figures, fair (A) and FIFO (B) alternately, on the private Redis."""

    def runner(measure: Any, side: str) -> Any:
        def run() -> Figures:
            bench.redis.flush()
            figures: Figures = asyncio.run(measure(bench.redis.url, MODES[side]))
            return figures

        return run

    waits = bench.pairs_of("fairness", {side: runner(light_wait, side) for side in MODES})
    wait = Metric(
        "fairness",
        f"light user's wait, ms ({HEAVY_JOBS} heavy jobs of {TASK_S * 1000:g} ms, "
        f"conc {CONCURRENCY})",
        "<=",
        300,
        " ms",
        "fair",
        "FIFO",
        figure="ms",
    )
    summarize(wait, waits, "wait_ms", "wait_ms")
    wait.value = wait.a_value  # the target is on the fair figure itself
    before = [p["A"]["heavy_before"] for p in waits if p.get("A")]
    wait.note = f"heavy jobs started before the light one, fair: {before}"
    drains = bench.pairs_of("fairness", {side: runner(drain, side) for side in MODES})
    throughput = Metric(
        "fairness",
        f"drain jobs/s ({DRAIN_JOBS} jobs, {DRAIN_USERS} users, conc {DRAIN_CONCURRENCY})",
        ">=",
        0.8,
        "x",
        "fair",
        "FIFO",
        figure="jobs/s",
    )
    summarize(throughput, drains, "jobs_per_s", "jobs_per_s")
    return [wait, throughput]
