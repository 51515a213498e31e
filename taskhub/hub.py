"""The kernel: resolve each component the config names, then run and stop them in order.

A Hub is built in two steps. Construction validates everything (config keys,
component names, component options) and raises one ConfigError listing every
problem. ``run`` then starts the components a process role needs, waits for
SIGINT or SIGTERM, and stops them: the server drains its requests, the worker
finishes or hands back its jobs, sinks flush, connections close.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import inspect
import logging
import os
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError
from redis.asyncio import Redis

from taskhub import __version__
from taskhub.admission import Admission
from taskhub.components import (
    Component,
    Limiter,
    QueueBackend,
    Server,
    Sink,
    TaskHandler,
    TaskSpec,
)
from taskhub.config import (
    DEFAULT_TYPES,
    JOB_OPTIONS,
    ComponentSection,
    Loc,
    RawConfig,
    Settings,
    TaskSection,
    load_file,
    mask_secrets,
    mask_url,
    parse_settings,
    problems_from,
)
from taskhub.errors import (
    ConfigError,
    Problem,
    StartupError,
    UnknownComponentError,
    UsageError,
)
from taskhub.execution import TaskRunner
from taskhub.plugins import PluginRegistry, load_plugins
from taskhub.redis_client import connect, is_embedded
from taskhub.submission import SubmissionParser

logger = logging.getLogger("taskhub")

C = TypeVar("C", bound=Component)


class Role(enum.Flag):
    SERVER = enum.auto()
    WORKER = enum.auto()
    BOTH = SERVER | WORKER


class Hub:
    def __init__(
        self,
        settings: Settings,
        raw: RawConfig,
        registry: PluginRegistry,
        *,
        server_overrides: Mapping[str, Any] | None = None,
    ) -> None:
        self.settings = settings
        self.raw = raw
        self.registry = registry
        problems: list[Problem] = []
        build = _Builder(raw, registry, problems)
        self.limiter = build(Limiter, settings.limiter, ("limiter",))
        self.queue = build(QueueBackend, settings.queue, ("queue",))
        self.server = build(Server, settings.server, ("server",), server_overrides or {})
        self.sinks = [build(Sink, s, ("sinks", i)) for i, s in enumerate(settings.sinks)]
        self.tasks: dict[str, TaskSpec] = {}
        for name, section in settings.tasks.items():
            handler = build(TaskHandler, section, ("tasks", name), default_type=name)
            self.tasks[name] = TaskSpec(name, handler, **job_options(section))
        if settings.default_task not in settings.tasks:
            defined = ", ".join(sorted(settings.tasks))
            message = f"{settings.default_task!r} is not in tasks (defined: {defined})"
            problems.append(raw.problem(("default_task",), message))
        if problems:
            raise ConfigError(raw.source, problems)
        self.default_task = settings.default_task
        self.submissions = SubmissionParser(self.tasks, self.default_task)
        self.runner = TaskRunner(self.sinks)
        self.redis: Redis | None = None
        self.admission: Admission | None = None
        self._started: list[str] = []

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike[str],
        *,
        server_overrides: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Hub:
        raw = load_file(path, env)
        settings = parse_settings(raw)
        plugins_dir = Path(settings.plugins_dir) if settings.plugins_dir else None
        registry = load_plugins(plugins_dir, settings.plugins)
        return cls(settings, raw, registry, server_overrides=server_overrides)

    # ----------------------------------------------------------------- inspection

    @property
    def embedded(self) -> bool:
        return is_embedded(self.settings.redis.url)

    def resolved(self) -> dict[str, Any]:
        """The effective config, defaults filled in and secrets masked, for ``taskhub check``."""
        settings = self.settings

        def section(component: Component) -> dict[str, Any]:
            return {"type": component.name, **component.config.model_dump(mode="json")}

        resolved = {
            "redis": settings.redis.model_dump(mode="json"),
            "plugins_dir": settings.plugins_dir,
            "plugins": list(settings.plugins),
            "server": section(self.server),
            "limiter": section(self.limiter),
            "queue": section(self.queue),
            "sinks": [section(sink) for sink in self.sinks],
            "tasks": {
                name: {**section(spec.handler), **job_options(spec)}
                for name, spec in self.tasks.items()
            },
            "default_task": self.default_task,
            "logging": settings.logging.model_dump(mode="json"),
        }
        return mask_secrets(resolved, (), self.raw)

    def check_role(self, role: Role) -> None:
        if self.embedded and role is not Role.BOTH:
            raise UsageError(
                f"{self.raw.source}: redis.url is memory://, which keeps everything inside one "
                "process: use `taskhub run`, or point redis.url at a Redis server "
                "(for example redis://127.0.0.1:6379)"
            )

    # ----------------------------------------------------------------- running

    def connect_redis(self, *, blocking_timeout: float = 0.0) -> Redis:
        """A new client on the configured Redis (components that block get their own)."""
        return connect(self.settings.redis, blocking_timeout=blocking_timeout)

    async def run(self, role: Role) -> None:
        """Start, serve until SIGINT/SIGTERM (or a worker failure), then stop cleanly."""
        self.check_role(role)
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        signals = (signal.SIGINT, signal.SIGTERM)
        for signum in signals:
            loop.add_signal_handler(signum, self._on_signal, signum, stop)
        worker: asyncio.Task[None] | None = None
        try:
            await self.start(role)
            if role & Role.WORKER:
                worker = asyncio.create_task(self.queue.work(self, stop), name="taskhub-worker")
            waiter = asyncio.create_task(stop.wait())
            await asyncio.wait(
                {waiter, worker} if worker else {waiter}, return_when=asyncio.FIRST_COMPLETED
            )
            waiter.cancel()
            stop.set()
        finally:
            await self.stop(worker)
            for signum in signals:
                loop.remove_signal_handler(signum)
        if worker is not None and worker.done() and not worker.cancelled() and worker.exception():
            raise StartupError(f"the worker stopped: {worker.exception()}")

    def _on_signal(self, signum: int, stop: asyncio.Event) -> None:
        name = signal.Signals(signum).name
        if stop.is_set():
            logger.warning("%s again: exiting now, without waiting for work in flight", name)
            os._exit(1)
        logger.info("%s received: shutting down (send it again to exit at once)", name)
        stop.set()

    async def start(self, role: Role) -> None:
        self.redis = self.connect_redis()
        await self.queue.open(self)
        self._started.append("queue")
        if role & Role.WORKER:
            for index, sink in enumerate(self.sinks):
                try:
                    await sink.open()
                except OSError as exc:
                    raise StartupError(f"sinks[{index}] ({sink.name}): {exc}") from exc
                self._started.append(f"sink:{index}")
        if role & Role.SERVER:
            self.admission = Admission(
                self.redis, self.limiter, self.queue, self.settings.redis.key_prefix
            )
            await self.server.start(self)
            self._started.append("server")
        await self._lifecycle("startup")
        self._log_banner(role)

    async def stop(self, worker: asyncio.Task[None] | None = None) -> None:
        """Stop what started, in reverse order; safe to call after a failed start."""
        with contextlib.suppress(Exception):
            await self._lifecycle("shutdown")
        if "server" in self._started:
            await self.server.stop()
        if worker is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await worker
        for index, sink in enumerate(self.sinks):
            if f"sink:{index}" in self._started:
                try:
                    await sink.close()
                except Exception:
                    logger.exception("sinks[%d] (%s) failed to close", index, sink.name)
        if "queue" in self._started:
            await self.queue.close()
        if self.redis is not None:
            await self.redis.aclose()
            self.redis = None
        if self._started:
            logger.info("taskhub stopped")
        self._started.clear()

    async def _lifecycle(self, hook_name: str) -> None:
        for result in getattr(self.registry.manager.hook, hook_name)(hub=self):
            if inspect.isawaitable(result):
                await result

    def _log_banner(self, role: Role) -> None:
        roles = "+".join(r.name.lower() for r in (Role.SERVER, Role.WORKER) if r & role)
        logger.info("taskhub %s started (%s)", __version__, roles)
        if self.embedded:
            logger.warning(
                "redis.url is memory://: limiter and queue run on embedded fakeredis inside "
                "this process. Single process only, and nothing survives a restart"
            )
        else:
            logger.info("redis: %s", mask_url(self.settings.redis.url))
        if role & Role.SERVER:
            logger.info("limiter: %s", _describe(self.limiter))
            logger.info("listening on %s", self.server.address)
        if role & Role.WORKER:
            logger.info("queue: %s", _describe(self.queue))
            logger.info("sinks: %s", ", ".join(_describe(s) for s in self.sinks) or "none")
        logger.info("tasks: %s (default: %s)", ", ".join(self.tasks), self.default_task)


def job_options(source: TaskSection | TaskSpec) -> dict[str, Any]:
    """A task's job options (retries, timeout, ...), from its config entry or its spec."""
    return {name: getattr(source, name) for name in JOB_OPTIONS}


def _describe(component: Component) -> str:
    options = " ".join(f"{k}={v}" for k, v in component.config.model_dump().items())
    return f"{component.name} {options}".strip()


class _Builder:
    """Instantiates components from config sections, collecting problems instead of raising."""

    def __init__(self, raw: RawConfig, registry: PluginRegistry, problems: list[Problem]) -> None:
        self.raw = raw
        self.registry = registry
        self.problems = problems

    def __call__(
        self,
        base: type[C],
        section: ComponentSection,
        loc: Loc,
        overrides: Mapping[str, Any] | None = None,
        default_type: str | None = None,
    ) -> C:
        kind = base.kind
        name = section.type or default_type or DEFAULT_TYPES[kind]
        try:
            cls = self.registry.get(kind, name)
        except UnknownComponentError as exc:
            self.problems.append(self.raw.problem((*loc, "type"), str(exc)))
            return None  # type: ignore[return-value]  # the caller raises ConfigError
        options = {**section.options, **(overrides or {})}
        try:
            config = cls.Config.model_validate(options)
        except ValidationError as exc:
            self.problems.extend(problems_from(exc, cls.Config, loc, self.raw))
            return None  # type: ignore[return-value]
        return cls(config)  # type: ignore[return-value]
