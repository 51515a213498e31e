"""The worker: SAQ's worker loop with taskhub's job lifecycle.

SAQ's ``Worker.process`` is replaced because four of its outcomes break
taskhub's promises: it marks a job active in a separate write after dequeuing
it (the sweep race), retries a cancelled job at shutdown as a used attempt,
logs a deliberate ``RetryLater`` as an error, and fails a job for good without
keeping it anywhere. Here each outcome is one fenced transition
(:mod:`taskhub.builtin.saq.redis_queue`):

- success: complete (after the sinks, so a crash re-runs it instead of losing it);
- ``RetryLater(delay)``: queued again after ``delay``, an attempt used, logged at INFO;
- an exception or a timeout: retried after an exponential, jittered delay while
  attempts remain, then a dead letter with its traceback;
- shutdown: what does not finish within the grace period goes back to the head
  of the queue with its attempt given back;
- an abort request: cancelled and finished as aborted, whatever the handler then does
  (it wins over any outcome that reaches Redis after it; a handler that ignores the
  cancellation is waited for until its timeout at most).

While it runs, the worker beats for every job it holds (``heartbeat / 3``), so a
live job is never swept and a dead worker's jobs are found within ``heartbeat``
plus one sweep interval. A claim or an outcome whose reply is lost (a slow Redis)
is asked again for up to ``heartbeat``, so it neither costs an attempt nor re-runs
the job (a repeat changes nothing: see :mod:`taskhub.builtin.saq.redis_queue`).

A sharded queue (:mod:`taskhub.store.sharding`) is worked as one: each of the worker's
slots takes from its own shard first, then from the others, and waits on its own
when all are empty; each job moves only in the shard it came from. One shard
behaves exactly as a plain queue.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import traceback
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast

import orjson
from saq import Worker
from saq.job import Job, Status
from saq.types import Context, WorkerInfo
from saq.utils import cancel_tasks, now

from taskhub.builtin.saq.redis_queue import (
    ABORT_REQUESTED,
    REQUEST_ID,
    SEEN_MS,
    Fence,
    HardenedRedisQueue,
    Move,
    Moved,
)
from taskhub.jobs import RetryLater
from taskhub.monitoring import trace_context, tracing
from taskhub.monitoring.log_context import job_scope

if TYPE_CHECKING:
    from taskhub.context import JobCounters, JobRunner
    from taskhub.jobs import TaskSpec
    from taskhub.monitoring.otel import Tracer

logger = logging.getLogger(__name__)
T = TypeVar("T")

# How long a cancelled handler gets to unwind before the job is handed back anyway.
CANCEL_DEADLINE = 2.0
# A slot whose ``process`` raised (a bug) waits this long before it takes again.
SLOT_BACKOFF = 1.0


def backoff_delay(attempts: int, base: float, cap: float) -> float:
    """Seconds before the next attempt: ``base`` doubling per attempt up to ``cap``
    (``cap`` 0: no doubling), with "equal jitter" (a random point in the upper half),
    so retries of many jobs spread out yet each delay stays at least half the nominal."""
    nominal = base if cap <= 0 else min(cap, base * 2 ** max(attempts - 1, 0))
    return nominal / 2 + random.random() * nominal / 2  # not cryptographic


async def outcome(task: asyncio.Task[Any], timeout: float | None) -> Any:
    """The handler's result; TimeoutError once ``timeout`` passes with it still running.

    As ``wait_for(shield(task), timeout)``, but with one future and one timer:
    cancelling the caller leaves the handler running, for the caller to cancel
    within a deadline (a handler may ignore cancellation).
    """
    waiter = asyncio.get_running_loop().create_future()

    def wake(_: object = None) -> None:
        if not waiter.done():
            waiter.set_result(None)

    task.add_done_callback(wake)
    timer = asyncio.get_running_loop().call_later(timeout, wake) if timeout else None
    try:
        await waiter
    finally:
        if timer is not None:
            timer.cancel()
        task.remove_done_callback(wake)
    if not task.done():
        raise TimeoutError
    return task.result()


def shard_of(job: Job) -> HardenedRedisQueue:
    """The shard a job was read from: each job moves only there."""
    return cast(HardenedRedisQueue, job.queue)


async def beat(shard: HardenedRedisQueue, jobs: list[Job]) -> None:
    await shard.beat(job.id for job in jobs)


async def read_jobs(shard: HardenedRedisQueue, jobs: list[Job]) -> list[Job | None]:
    return await shard.jobs(job.key for job in jobs)


class HubWorker(Worker[Context]):
    """SAQ's worker loop with taskhub's outcomes, heartbeats and hand-back on shutdown."""

    SIGNALS = []  # noqa: RUF012  # the hub handles SIGINT/SIGTERM for every component
    queue: HardenedRedisQueue

    def __init__(
        self,
        queue: HardenedRedisQueue,
        *,
        beat_interval: float,
        runner: JobRunner,
        specs: Mapping[str, TaskSpec],
        metrics: JobCounters | None = None,
        shards: Sequence[HardenedRedisQueue] = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(queue, **kwargs)
        # ``queue`` (the first shard) also holds this worker's reports and counters.
        self.shards = list(shards) or [queue]
        self.runner = runner
        self.metrics = metrics
        for shard in self.shards:
            shard.on_dead = self._dead
            if metrics is not None:
                shard.on_recovered = self._recovered
        self.specs = specs
        self.tracer: Tracer | None = tracing.active  # None: tracing is off
        self.beat_interval = beat_interval
        self._upkeep_tasks: list[asyncio.Task[None]] = []
        self._beater: asyncio.Task[None] | None = None
        self._busy: dict[asyncio.Task[Any], Job] = {}  # process task -> the job it runs
        self._slots = 0  # slots started: slot n prefers shard n modulo the shard count

    async def upkeep(self) -> list[asyncio.Task[None]]:
        self._upkeep_tasks = await super().upkeep()  # sweeps the first shard
        for shard in self.shards[1:]:
            sweep = self._every(self.timers["sweep"], shard.sweep)
            self._upkeep_tasks.append(asyncio.create_task(sweep, name=f"sweep-{shard.name}"))
        self._beater = asyncio.create_task(self._beat_forever(), name="saq-heartbeat")
        return self._upkeep_tasks

    async def _every(self, seconds: float, call: Callable[[int], Awaitable[Any]]) -> None:
        """An upkeep call every ``seconds`` (as SAQ's own upkeep: ``seconds`` is its lock)."""
        while not self.event.is_set():
            try:
                await call(int(seconds))
            except Exception:
                logger.exception("upkeep of the queue failed")
            await asyncio.sleep(seconds)

    async def schedule(self, lock: int = 1) -> None:
        """Queue the retries that are due, in every shard (taskhub has no cron jobs)."""
        await asyncio.gather(*(shard.schedule(lock) for shard in self.shards))

    async def _beat_forever(self) -> None:
        """Keep every job this worker holds alive; stops only once they are settled."""
        while True:
            try:
                await self._each_shard(self._busy.values(), beat)
            except Exception:  # a bug, not an outage: keep beating regardless
                logger.exception("heartbeat failed")
            await asyncio.sleep(self.beat_interval)

    async def _each_shard(
        self,
        jobs: Iterable[Job],
        call: Callable[[HardenedRedisQueue, list[Job]], Awaitable[T]],
    ) -> list[T]:
        """``call`` once per shard with those of ``jobs`` in it, the shards at once."""
        if len(self.shards) == 1:
            return [await call(self.queue, list(jobs))]
        by_shard: defaultdict[HardenedRedisQueue, list[Job]] = defaultdict(list)
        for job in jobs:
            by_shard[shard_of(job)].append(job)
        return await asyncio.gather(*(call(shard, held) for shard, held in by_shard.items()))

    async def worker_info(self, ttl: int = 60) -> WorkerInfo:
        """SAQ's stats report, stamped with when it was written, for ``taskhub status``."""
        self._metadata = {**(self._metadata or {}), SEEN_MS: now(), "running": len(self._busy)}
        return await super().worker_info(ttl)

    async def abort(self, abort_threshold: float) -> None:
        """Cancel running jobs whose abort was requested (status ``aborting``)."""
        if not self._busy:
            return
        found = await self._each_shard(self._busy.values(), read_jobs)
        for stored in (job for jobs in found for job in jobs):
            if stored is not None and stored.status == Status.ABORTING:
                context = self.job_task_contexts.get(stored)
                if context is not None and context["aborted"] is None:
                    logger.info("aborting job %s on request", stored.key)
                    context["aborted"] = stored.error or "aborted"
                    context["task"].cancel()

    def _process(self, previous_task: asyncio.Task[Any] | None = None) -> None:
        """Start one slot: a task that runs job after job (SAQ starts a task per job)."""
        if not self.event.is_set():
            home = self._slots % len(self.shards)
            self._slots += 1
            self.tasks.add(asyncio.create_task(self._slot(home), name="process"))

    async def _slot(self, home: int = 0) -> None:
        while not self.event.is_set():
            try:
                await self.process(home)
            except Exception:
                logger.exception("the worker failed to process a job")
                await asyncio.sleep(SLOT_BACKOFF)

    async def take(self, home: int = 0) -> tuple[Job, bytes] | None:
        """The next job: from shard ``home``, else from the others in turn, without
        blocking; only when all are empty, block on ``home`` for the dequeue timeout.

        With at least as many slots as shards, every shard has slots blocked on it;
        with fewer, a job in a shard nobody blocks on waits at most one timeout.
        """
        shards = self.shards
        count = len(shards)
        for step in range(count if count > 1 else 0):
            taken = await shards[(home + step) % count].take(0, block=False)
            if taken is not None:
                return taken
        return await shards[home].take(self.dequeue_timeout)

    async def process(self, home: int = 0) -> bool:
        taken = await self.take(home)
        if taken is None:
            return False
        job, raw = taken
        queue = shard_of(job)
        if self.event.is_set():  # stopping: not ours to start
            await queue.skip_if_down(queue.move(job, Move.FRONT, Fence.STORED, raw))
            return False
        if await self._deferred(job, raw):
            return True
        # Asked again while Redis is unreachable: a claim whose reply was lost may have
        # run, and would otherwise cost an attempt that never ran.
        claim = queue.claim(job, raw, self.id, persist=queue.lease(job))
        if not await queue.skip_if_down(claim):
            return True  # aborted or swept meanwhile, or Redis is away (the sweep re-queues it)
        me = asyncio.current_task()
        assert me is not None
        self._busy[me] = job
        fence = queue.run_fence(job)
        try:
            await self._run(job, fence)
        finally:
            self._busy.pop(me, None)
        return True

    async def _deferred(self, job: Job, raw: bytes) -> bool:
        """Reschedule a job over its execution limit for when it may run; no attempt used."""
        if not self.runner.limited:  # no execution limits: nothing to ask
            return False
        spec = self.specs.get(job.function)
        user_id = (job.kwargs or {}).get("user_id", "")
        if spec is None:
            return False
        wait_ms = await self.runner.wait_ms(spec, job_id=job.key, user_id=user_id)
        if wait_ms <= 0:
            return False
        at = now() / 1000 + wait_ms / 1000
        job.scheduled = int(at)
        queue = shard_of(job)
        await queue.skip_if_down(queue.move(job, Move.LATER, Fence.STORED, raw, score=at))
        logger.debug("job %s over its execution limit: runs in %d ms", job.key, wait_ms)
        return True

    async def _run(self, job: Job, fence: str) -> None:
        """Run one attempt with the job's fields and request id on every log line it makes."""
        kwargs = job.kwargs or {}
        meta = job.meta or {}
        user_id = kwargs.get("user_id", "")
        with job_scope(job.key, user_id, job.function, meta.get(REQUEST_ID)):
            tracer = self.tracer
            if tracer is None:
                await self._attempt(job, fence, kwargs)
                return
            parent = meta.get(trace_context.TRACEPARENT)
            with tracer.job(job.function, job.key, job.attempts, user_id, parent):
                await self._attempt(job, fence, kwargs)

    async def _attempt(self, job: Job, fence: str, kwargs: dict[str, Any]) -> None:
        spec = self.specs[job.function]
        task = asyncio.create_task(
            self.runner.run(
                spec,
                job_id=job.key,
                user_id=kwargs.get("user_id", ""),
                payload=kwargs.get("payload"),
                attempt=job.attempts,
                enqueued_ms=job.queued,
            )
        )
        context = self.job_task_contexts[job] = {"task": task, "aborted": None}
        started = time.perf_counter()
        try:
            result = await outcome(task, job.timeout)
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if me is not None and me.cancelling():
                me.uncancel()  # handled here: the hand-back below must still reach Redis
            await cancel_tasks([task], CANCEL_DEADLINE)
            if context["aborted"] is not None:
                await self._aborted(job, fence, context["aborted"])
            else:
                await self._hand_back(job, fence)
        except Exception as exc:
            self._ran(job, started)
            timed_out = isinstance(exc, TimeoutError) and not task.done()  # ours, not the handler's
            if timed_out:
                await cancel_tasks([task], CANCEL_DEADLINE)
            if context["aborted"] is not None:  # whatever the handler did after the abort
                if timed_out:
                    logger.warning(
                        "job %s (task %s) ignored its abort until its %g s timeout",
                        job.key,
                        job.function,
                        job.timeout,
                    )
                await self._aborted(job, fence, context["aborted"])
            elif isinstance(exc, RetryLater):
                await self._again(job, fence, exc.delay, f"RetryLater: {exc}", level=logging.INFO)
            elif timed_out:
                await self._failed(job, fence, f"TimeoutError: timed out after {job.timeout} s")
            else:
                await self._failed(job, fence, traceback.format_exc())
        else:
            self._ran(job, started)
            if context["aborted"] is not None:  # it swallowed the cancellation: abort wins
                await self._aborted(job, fence, context["aborted"])
            else:
                await self._complete(job, fence, result)
        finally:
            if self.job_task_contexts.get(job) is context:
                del self.job_task_contexts[job]

    async def _aborted(self, job: Job, fence: str, error: str) -> None:
        """End the run as aborted: an abort, once requested, decides the outcome."""
        job.status, job.error, job.completed = Status.ABORTED, error, now()
        job.result, job.scheduled = None, 0  # any result came too late: never recorded
        if await self._settle(job, fence, Move.FINISH, kind=Fence.STOP):
            self._count(job, "aborted")

    async def _complete(self, job: Job, fence: str, result: Any) -> None:
        try:
            orjson.dumps(result)
        except TypeError as exc:
            error = f"TypeError: the handler's result cannot be stored as JSON: {exc}"
            await self._failed(job, fence, error)
            return
        job.status, job.result, job.completed, job.progress = Status.COMPLETE, result, now(), 1.0
        if await self._settle(job, fence, Move.FINISH):
            self._count(job, "completed")

    async def _failed(self, job: Job, fence: str, error: str) -> None:
        delay = backoff_delay(job.attempts, job.retry_delay, float(job.retry_backoff))
        summary = error.strip().splitlines()[-1]
        await self._again(
            job, fence, delay, error, level=logging.WARNING, summary=summary, failed=True
        )

    async def _again(
        self,
        job: Job,
        fence: str,
        delay: float,
        error: str,
        *,
        level: int,
        summary: str | None = None,
        failed: bool = False,
    ) -> None:
        """Schedule another attempt after ``delay``, or make the job a dead letter.
        ``failed``: the attempt failed (counted once recorded: an abort may win)."""
        summary = summary or error
        job.error = error
        if job.retryable:
            job.status, job.started, job.scheduled = Status.QUEUED, 0, int(now() / 1000 + delay)
            if await self._settle(job, fence, Move.LATER, score=now() / 1000 + delay):
                if failed:
                    self._count(job, "failed")
                self._count(job, "retried")
                logger.log(
                    level,
                    "job %s (task %s) attempt %d/%d: %s; next attempt in %.1f s",
                    job.key,
                    job.function,
                    job.attempts,
                    job.retries,
                    summary,
                    delay,
                )
            return
        job.status, job.completed = Status.FAILED, now()
        if await self._settle(job, fence, Move.DEAD, score=now()):
            if failed:
                self._count(job, "failed")
            self._count(job, "dead")
            logger.error(
                "job %s (task %s) failed after %d attempts, kept as a dead letter: %s",
                job.key,
                job.function,
                job.attempts,
                summary,
            )

    async def _dead(self, job: Job) -> None:
        """Hand a new dead letter to the sinks: every way a job becomes one (its last
        attempt failed here, or the sweep found its worker gone) passes through here once."""
        kwargs = job.kwargs or {}
        try:  # the job is a dead letter already: nothing here may undo or repeat that
            await self.runner.failed(
                job.function,
                job_id=job.key,
                user_id=kwargs.get("user_id", ""),
                payload=kwargs.get("payload"),
                attempt=job.attempts,
                enqueued_ms=job.queued,
                error=job.error or "",
            )
        except Exception:
            logger.exception("job %s: reporting its dead letter to the sinks failed", job.key)

    async def _hand_back(self, job: Job, fence: str) -> None:
        """Shutdown cut this attempt short: queue it first in line, attempt not used."""
        job.attempts -= 1
        job.status, job.started, job.worker_id = Status.QUEUED, 0, None
        if await self._settle(job, fence, Move.FRONT):
            self._count(job, "handed_back")
            logger.info("job %s (task %s) handed back to the queue", job.key, job.function)

    def _count(self, job: Job, outcome: str) -> None:
        if self.tracer is not None:
            self.tracer.outcome(outcome)
        if self.metrics is not None:
            self.metrics.count(job.function, outcome)

    def _ran(self, job: Job, started: float) -> None:
        if self.metrics is not None:
            self.metrics.ran(job.function, time.perf_counter() - started)

    def _recovered(self, task: str, move: Move) -> None:
        """The sweep gave back (or, out of attempts, buried) a job whose worker is gone."""
        assert self.metrics is not None
        self.metrics.count(task, "swept")
        if move is Move.DEAD:
            self.metrics.count(task, "dead")

    async def _settle(
        self, job: Job, fence: str, move: Move, score: float = 0, kind: Fence = Fence.RUN
    ) -> bool:
        """Record an attempt's outcome, asking again while Redis is unreachable (the job
        still beats meanwhile): given up, the outcome is lost and the job runs again.

        An abort requested before the outcome reached Redis (DELETE answered 202) wins:
        the outcome is refused there, the run ends as aborted instead, and False says
        that the outcome asked for was not recorded.
        """
        queue = shard_of(job)
        try:  # an outage is the queue's to log, once, not one line per job in flight
            moved = await queue.skip_if_down(
                queue.move(job, move, kind, fence, score=score, persist=queue.lease(job))
            )
        except Exception:
            logger.exception("job %s: recording its outcome failed; it will run again", job.key)
            return False
        if moved is None:
            # The job stays in the active list without beats, so the sweep re-runs it.
            logger.debug("job %s: Redis is unreachable; it will run again", job.key)
            return False
        if moved is Moved.ABORTING:
            logger.info("job %s: aborted on request before its outcome was recorded", job.key)
            # The run as it was, before a retry or a hand-back reset it (the claim set
            # ``touched`` with ``started``; nothing since changed it).
            worker_id, _, attempts = fence.rpartition(":")
            job.worker_id, job.attempts, job.started = worker_id, int(attempts), job.touched
            await self._aborted(job, fence, ABORT_REQUESTED)
            return False
        if not moved:
            logger.warning(
                "job %s was taken from this worker while it ran (missed heartbeats?); "
                "its outcome here is dropped",
                job.key,
            )
        else:
            self.count(job, move)
        return bool(moved)

    def count(self, job: Job, move: Move) -> None:
        """SAQ's per-worker counters, which its own finish would bump: they feed the
        stats the worker reports, from which ``taskhub status`` derives rates."""
        if move is Move.DEAD:
            self.queue.failed += 1
        elif move is Move.LATER:  # a failed attempt (or RetryLater) with attempts left
            self.queue.retried += 1
        elif job.status == Status.COMPLETE:
            self.queue.complete += 1
        elif job.status == Status.ABORTED:
            self.queue.aborted += 1

    async def stop(self) -> None:
        """Stop taking jobs, give those in flight the grace period, hand back the rest."""
        self.event.set()
        async with self._stop_lock:
            if self._stopped:
                return
            try:
                for task in self._upkeep_tasks:
                    task.cancel()
                processes = [t for t in self.tasks if t not in self._upkeep_tasks]
                self.tasks.clear()
                if processes:
                    await self._drain(processes)
            finally:
                if self._beater is not None:
                    self._beater.cancel()
                self.pool.shutdown(wait=False, cancel_futures=True)
                self._stopped = True

    async def _drain(self, processes: list[asyncio.Task[Any]]) -> None:
        grace = self._shutdown_grace_period_s or 0
        _, pending = await asyncio.wait(processes, timeout=grace)
        running = [task for task in pending if task in self._busy]
        if running:
            logger.warning(
                "%d job(s) still running after the %g s grace period: handing them back",
                len(running),
                grace,
            )
            for task in running:
                task.cancel()
        if pending:  # idle ones return within one dequeue timeout
            await asyncio.wait(pending, timeout=self.dequeue_timeout + CANCEL_DEADLINE + 1)
