"""One process running the hub in a role: the :class:`~taskhub.PluginContext` plugins see.

Starting pushes each step's undo onto one ``AsyncExitStack``, so stopping (after
SIGINT or SIGTERM, a failed start, or a worker that died) undoes exactly what
started, in reverse: the ``shutdown`` hook, then the server drains its requests,
the worker finishes or hands back its jobs, sinks flush, connections close.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import logging
import os
import signal
from collections.abc import AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING

from redis.asyncio import Redis

from taskhub.components import QueueBackend, Sink
from taskhub.config.models import Settings
from taskhub.context import (
    HttpHandler,
    JobCounters,
    JobRunner,
    Role,
    RoleError,
    ScriptConnection,
)
from taskhub.errors import StartupError
from taskhub.hub.describe import log_banner
from taskhub.hub.kernel import Hub
from taskhub.hub.runner import TaskRunner
from taskhub.hub.scheduler import Scheduler
from taskhub.jobs import TaskSpec
from taskhub.limits.admission import Admission
from taskhub.limits.schedules import TickSubmitter
from taskhub.monitoring import tracing
from taskhub.monitoring.exporter import QueueDepth, WorkerExporter
from taskhub.monitoring.metrics import JobMetrics, RequestMetrics
from taskhub.monitoring.schedules import ScheduleBoard
from taskhub.monitoring.traffic import TrafficRecorder, traffic_prefix
from taskhub.web.app import ApiParts, HttpApi, build_api
from taskhub.web.readiness import Check, pinger

if TYPE_CHECKING:
    from taskhub.monitoring.otel import Tracer

logger = logging.getLogger("taskhub")


class Runtime:
    """Starts, runs and stops one process; implements :class:`taskhub.PluginContext`."""

    def __init__(
        self, hub: Hub, role: Role, *, serve_http: bool = True, redis_checked: bool = False
    ) -> None:
        self.hub = hub
        self._role = role
        # False: another server (an ASGI one) serves ``http``; the server component stays idle.
        self._serve_http = serve_http
        # True: a supervisor checked the Redis servers for all its processes, once.
        self._redis_checked = redis_checked
        self.stopping = asyncio.Event()
        self._stack = contextlib.AsyncExitStack()
        self.worker: asyncio.Task[None] | None = None
        self.admission: Admission | None = None
        self.traffic: TrafficRecorder | None = None  # the dashboard's counts, when it is on
        self._http: HttpApi | None = None
        self._runner: TaskRunner | None = None
        self._job_metrics: JobMetrics | None = None
        self._request_metrics: RequestMetrics | None = None
        self._queue_depth: QueueDepth | None = None
        self._exporter: WorkerExporter | None = None
        self.tracer: Tracer | None = None  # while tracing is on

    # ------------------------------------------------------------- PluginContext

    @property
    def role(self) -> Role:
        return self._role

    @property
    def settings(self) -> Settings:
        return self.hub.settings

    @property
    def tasks(self) -> Mapping[str, TaskSpec]:
        return self.hub.tasks

    @property
    def default_task(self) -> str:
        return self.hub.default_task

    @property
    def redis(self) -> Redis:
        client = self.hub.connections.redis
        if client is None:
            raise RoleError("context.redis is ready once the queue opens (queue.open)")
        return client

    def connect_redis(self, *, blocking_timeout: float = 0.0) -> Redis:
        return self.hub.connections.connect(blocking_timeout=blocking_timeout)

    def connect_scripts(self) -> ScriptConnection | None:
        return self.hub.connections.scripts()

    @property
    def http(self) -> HttpHandler:
        if self._http is None:
            raise RoleError(_missing("http", "a server process (taskhub run or serve)"))
        return self._http

    @property
    def runner(self) -> JobRunner:
        if self._runner is None:
            raise RoleError(_missing("runner", "a worker process (taskhub run or worker)"))
        return self._runner

    @property
    def job_counters(self) -> JobCounters | None:
        if not self._role & Role.WORKER:
            raise RoleError(_missing("job_counters", "a worker process (taskhub run or worker)"))
        return self._job_metrics

    # ------------------------------------------------------------- running

    async def run(self, on_started: Callable[[asyncio.Event], None] | None = None) -> None:
        """Start, serve until SIGINT/SIGTERM (or a worker failure), then stop cleanly.

        ``on_started(stopping)`` runs once everything serves; setting ``stopping`` shuts
        down as a signal does (a supervised process uses both: see
        :mod:`taskhub.cli.supervisor`).
        """
        loop = asyncio.get_running_loop()
        signals = (signal.SIGINT, signal.SIGTERM)
        for signum in signals:
            loop.add_signal_handler(signum, self._on_signal, signum)
        try:
            await self.start()
            try:
                if on_started is not None:
                    on_started(self.stopping)
                await self.until_stopped()
            finally:
                await self.close()
        finally:
            for signum in signals:
                loop.remove_signal_handler(signum)
        self.raise_if_worker_failed()

    async def start(self) -> None:
        """Start what this role runs; if a step fails, undo the steps before it and raise."""
        self.hub.check_role(self._role)
        try:
            await self._start()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Stop what started, in reverse order; calling it again does nothing."""
        self.stopping.set()
        await self._stack.aclose()

    def raise_if_worker_failed(self) -> None:
        worker = self.worker
        if worker is not None and worker.done() and not worker.cancelled() and worker.exception():
            raise StartupError(f"the worker stopped: {worker.exception()}")

    async def until_stopped(self) -> None:
        """Until ``stopping`` is set, or until the worker ends (it only does by failing):
        what a process that serves does between :meth:`start` and :meth:`close`."""
        waiter = asyncio.create_task(self.stopping.wait())
        waiting = {waiter, self.worker} if self.worker else {waiter}
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self.stopping.is_set():
            logger.warning("%s again: exiting now, without waiting for work in flight", name)
            os._exit(1)
        logger.info("%s received: shutting down (send it again to exit at once)", name)
        self.stopping.set()

    async def _start(self) -> None:
        """Each step, then its undo on the stack: stopping is the same list, backwards."""
        hub, stack, role = self.hub, self._stack, self._role
        if not self._redis_checked:
            await hub.check_redis()  # before anything is admitted or taken
        self._start_tracing()
        stack.push_async_callback(hub.connections.aclose)
        hub.connections.shared()
        await hub.queue.open(self)
        stack.push_async_callback(self._closed)
        stack.push_async_callback(hub.queue.close)
        self._start_metrics()
        if role & Role.WORKER:
            self._runner = TaskRunner(hub.sinks, hub.build_execution_gate(), self.tracer)
            await self._open_sinks()
            stack.push_async_callback(self._worker_finished)
        if role & Role.SERVER:
            self.admission = hub.build_admission()
            if self.tracer is not None:
                self.tracer.instrument(self.admission)
            self._start_traffic()
            self._http = await asyncio.to_thread(build_api, self._api_parts(self.admission))
        freeze_startup_objects()
        if role & Role.SERVER and self._serve_http:
            await hub.server.start(self)
            stack.push_async_callback(hub.server.stop)
        if role & Role.SERVER:  # first when stopping: the server then drains answered waits
            stack.callback(hub.queue.end_waits)
        stack.push_async_callback(self._lifecycle, "shutdown", True)
        await self._lifecycle("startup")
        address = hub.server.address if self._serve_http else None
        log_banner(hub.settings, hub.components, role, address, self._metrics_address)
        if role & Role.WORKER:
            self.worker = asyncio.create_task(hub.queue.work(self, self.stopping), name="worker")
            self._start_scheduler()

    def _start_scheduler(self) -> None:
        """Queue ``schedules:``' ticks from this worker; stopped before the queue closes."""
        hub = self.hub
        if not hub.settings.schedules:
            return
        submitter = TickSubmitter(
            self.redis, hub.queue, hub.tasks, hub.shards, hub.settings.redis.key_prefix
        )
        scheduler = Scheduler(hub.settings.schedules, submitter)
        task = asyncio.create_task(scheduler.run(self.stopping), name="scheduler")
        self._stack.push_async_callback(_stopped, task)

    def _start_tracing(self) -> None:
        """Spans only while ``tracing.enabled``: off, OpenTelemetry is not imported."""
        if not self.hub.settings.tracing.enabled:
            return
        self.tracer = tracing.start(self.hub.settings.tracing, (self._role.name or "both").lower())
        # Flushed last (pushed first): the spans of everything that stops are exported too.
        self._stack.callback(tracing.stop)

    def _start_metrics(self) -> None:
        """Bind the counters this role updates; a worker alone also gets its own port."""
        metrics = self.hub.settings.metrics
        if not metrics.enabled:
            return
        if self._role & Role.SERVER:
            self._request_metrics = RequestMetrics(self.hub.rules)
            self._queue_depth = QueueDepth(self.hub.queue, metrics.depth_timeout)
        if self._role & Role.WORKER:
            self._job_metrics = JobMetrics(self.hub.tasks)
        if self._role is Role.WORKER:
            exporter = self._exporter = WorkerExporter(metrics.worker_host, metrics.worker_port)
            exporter.start()
            self._stack.push_async_callback(asyncio.to_thread, exporter.stop)

    @property
    def _metrics_address(self) -> str | None:
        return self._exporter.address if self._exporter is not None else None

    async def _open_sinks(self) -> None:
        for index, sink in enumerate(self.hub.sinks):
            try:
                await sink.open()
            except OSError as exc:
                raise StartupError(f"sinks[{index}] ({sink.name}): {exc}") from exc
            self._stack.push_async_callback(_close_sink, index, sink)

    def _start_traffic(self) -> None:
        """Count admissions for the dashboard: only while it is on, so off costs nothing."""
        settings = self.hub.settings
        if not settings.dashboard.enabled:
            return
        prefix = traffic_prefix(settings.redis.key_prefix, settings.redis.cluster)
        self.traffic = TrafficRecorder(self.redis, prefix, self.hub.rules)
        self.traffic.start()
        # Stopped after the server (pushed before it): the last requests' counts too.
        self._stack.push_async_callback(self.traffic.stop)

    def _api_parts(self, admission: Admission) -> ApiParts:
        hub = self.hub
        # Through the connection admissions use: the pipeline, where there is one.
        checks: dict[str, Check] = {"redis": pinger(hub.connections.admission() or self.redis)}
        limiter = hub.connections.limiter_redis
        if limiter is not None:
            checks["limiter_redis"] = pinger(limiter)
        checks["queue"] = hub.queue.check
        admin = hub.settings.limits.admin.enabled
        return ApiParts(
            admission=admission,
            submissions=hub.submissions,
            authenticator=hub.authenticator,
            queue=hub.queue,
            settings=hub.settings,
            ready_checks=checks,
            options=hub.server.api_options(),
            request_metrics=self._request_metrics,
            queue_depth=self._queue_depth,
            traffic=self.traffic,
            limits_admin=hub.build_limits_admin(admission.deny_cache) if admin else None,
            tracer=self.tracer,
            schedules=self._schedule_board(),
        )

    def _schedule_board(self) -> ScheduleBoard | None:
        settings = self.hub.settings
        if not settings.schedules:
            return None
        return ScheduleBoard(self.redis, settings.schedules, settings.redis.key_prefix)

    async def _worker_finished(self) -> None:
        """After the server has stopped: the worker finishes or hands back its jobs."""
        if self.worker is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await self.worker

    async def _lifecycle(self, hook_name: str, quiet: bool = False) -> None:
        try:
            for result in getattr(self.hub.registry.manager.hook, hook_name)(hub=self):
                if inspect.isawaitable(result):
                    await result
        except Exception:
            if not quiet:
                raise
            logger.exception("a %s hook failed", hook_name)

    async def _closed(self) -> None:
        logger.info("taskhub stopped")


@contextlib.asynccontextmanager
async def opened_queue(hub: Hub) -> AsyncIterator[QueueBackend]:
    """The queue alone, opened as a server opens it, for one-shot commands (``taskhub jobs``,
    ``taskhub status``); closed with its connection after."""
    runtime = Runtime(hub, Role.SERVER)
    hub.connections.shared()
    try:
        await hub.queue.open(runtime)
        try:
            yield hub.queue
        finally:
            await hub.queue.close()
    finally:
        await hub.connections.aclose()


def freeze_startup_objects() -> None:
    """Move what start-up made (modules, config, the API: some 75,000 objects) out of
    the garbage collector's sight, in every role and whatever the server.

    The requests in flight (a few dozen objects each) fill its youngest generation
    every few dozen requests, which moves them to the oldest and soon starts a full
    collection: 35 ms spent going over start-up's objects, in the middle of every
    request in flight, a few times a second (accepted load: p99 25 ms for a median of
    2). Frozen, a full collection sees only what came after start-up.
    """
    gc.collect()
    gc.freeze()


async def _stopped(task: asyncio.Task[None]) -> None:
    """Wait for a task that ends once ``stopping`` is set; log it if it failed."""
    try:
        await task
    except Exception:
        logger.exception("%s failed", task.get_name())


async def _close_sink(index: int, sink: Sink) -> None:
    try:
        await sink.close()
    except Exception:
        logger.exception("sinks[%d] (%s) failed to close", index, sink.name)


def _missing(name: str, where: str) -> str:
    return f"PluginContext.{name} exists only in {where}, once the kernel has built it"
