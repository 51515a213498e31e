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
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError
from redis.asyncio import Redis

from taskhub import __version__
from taskhub.components import (
    Authenticator,
    Component,
    Limiter,
    QueueBackend,
    Server,
    Sink,
    TaskHandler,
    TaskSpec,
)
from taskhub.config.loader import load_file
from taskhub.config.models import (
    DEFAULT_TYPES,
    JOB_OPTIONS,
    ComponentSection,
    RuleSection,
    Settings,
    TaskSection,
    parse_settings,
)
from taskhub.config.paths import Loc
from taskhub.config.problems import problems_from
from taskhub.config.raw import RawConfig
from taskhub.config.secrets import mask_secrets, mask_url
from taskhub.errors import (
    ConfigError,
    Problem,
    StartupError,
    UnknownComponentError,
    UsageError,
)
from taskhub.hub.plugins import PluginRegistry, load_plugins
from taskhub.hub.runner import TaskRunner
from taskhub.limits.admin import LimitsAdmin
from taskhub.limits.admission import Admission
from taskhub.limits.deny_cache import DenyCache
from taskhub.limits.execution import ExecutionGate
from taskhub.limits.policy import Rule
from taskhub.monitoring.exporter import QueueDepth, WorkerExporter
from taskhub.monitoring.metrics import JobMetrics, RequestMetrics
from taskhub.monitoring.traffic import TrafficRecorder, traffic_prefix
from taskhub.store.clients import connect
from taskhub.store.cluster_router import ClusterPipeline, admission_pipeline
from taskhub.store.pipeline import RedisPipeline
from taskhub.store.sharding import UNSHARDED, Shards
from taskhub.store.urls import is_embedded
from taskhub.web.submission import SubmissionParser

logger = logging.getLogger("taskhub")

C = TypeVar("C", bound=Component)
# What a worker knows about a job: rules keyed on the client (ip, headers) cannot apply.
EXECUTION_SOURCES = ("user", "task", "constant")


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
        self.rules = self._admission_rules(build, problems)
        self.execution_rules = self._rules(
            build, settings.limits.execution, "execution", problems, taken=self.rules
        )
        self.queue = build(QueueBackend, settings.queue, ("queue",))
        # On a cluster every key is tagged, even with one shard (taskhub.store.sharding).
        cluster = settings.redis.cluster
        self.shards = self.queue.layout(cluster=cluster) if self.queue else UNSHARDED
        self.server = build(Server, settings.server, ("server",), server_overrides or {})
        self.authenticator = build(Authenticator, settings.auth, ("auth",))
        self.sinks = [build(Sink, s, ("sinks", i)) for i, s in enumerate(settings.sinks)]
        self.tasks: dict[str, TaskSpec] = {}
        for name, section in settings.tasks.items():
            handler = build(TaskHandler, section, ("tasks", name), default_type=name)
            self.tasks[name] = TaskSpec(name, handler, **job_options(section), cost=section.cost)
        self._check_limits(problems)
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
        self.limiter_redis: Redis | None = None
        self.pipeline: RedisPipeline | ClusterPipeline | None = None  # admission's fast path
        self.admission: Admission | None = None
        # None while metrics are off (or the role has none): components then count nothing.
        self.request_metrics: RequestMetrics | None = None
        self.queue_depth: QueueDepth | None = None
        self.job_metrics: JobMetrics | None = None
        self.traffic: TrafficRecorder | None = None  # the dashboard's counts, when it is on
        self._exporter: WorkerExporter | None = None
        self._started: list[str] = []

    def _admission_rules(self, build: _Builder, problems: list[Problem]) -> list[Rule]:
        """``limits.admission``, or the ``limiter`` shorthand: one rule per user, named
        after its strategy."""
        limits, limiter = self.settings.limits, self.settings.limiter
        if limiter is not None and limits.admission is not None:
            message = "give either limiter (one rule per user) or limits.admission, not both"
            problems.append(self.raw.problem(("limiter",), message))
        if limits.admission is not None:
            return self._rules(build, limits.admission, "admission", problems)
        strategy = build(Limiter, limiter or ComponentSection(), ("limiter",))
        if strategy is None:
            return []
        return [Rule.keyed(strategy.name, strategy, "user", shadow=limits.shadow)]

    def _rules(
        self,
        build: _Builder,
        sections: list[RuleSection],
        where: str,
        problems: list[Problem],
        taken: Sequence[Rule] = (),
    ) -> list[Rule]:
        """Build one stage's rules. Names are unique across both stages: a rule's Redis
        keys and ``taskhub limits --rule`` address it by name alone."""
        rules: list[Rule] = []
        for index, section in enumerate(sections):
            loc: Loc = ("limits", where, index)
            name = section.rule_name
            if any(rule.name == name for rule in rules):
                problems.append(self.raw.problem((*loc, "name"), f"duplicate rule name {name!r}"))
            elif any(rule.name == name for rule in taken):
                message = (
                    f"rule name {name!r} is also an admission rule's: rules keep their Redis "
                    "state under their name, so each needs its own (set name:)"
                )
                problems.append(self.raw.problem((*loc, "name"), message))
            strategy = build(Limiter, section, loc)
            if strategy is None:
                continue
            shadow = section.shadow or self.settings.limits.shadow
            rules.append(Rule.keyed(name, strategy, section.key, shadow=shadow))
        return rules

    def _check_limits(self, problems: list[Problem]) -> None:
        limits = self.settings.limits
        if limits.fail_mode != "closed" and not limits.redis_url:
            message = (
                f"{limits.fail_mode!r} needs limits.redis_url: with one Redis for the limiter "
                "and the queue, nothing can be queued while it is down, so every mode answers 503"
            )
            problems.append(self.raw.problem(("limits", "fail_mode"), message))
        for index, rule in enumerate(self.rules):
            if not rule.limiter.holds_slot:
                continue
            if limits.redis_url:
                message = (
                    f"{rule.limiter.name!r} keeps its slots beside the queue's jobs, so it "
                    "needs the limiter on the queue's Redis: remove limits.redis_url"
                )
                problems.append(self.raw.problem(("limits", "admission", index), message))
            elif self.shards.split:
                message = (
                    f"{rule.limiter.name!r} keeps its slots beside the job, in the user's "
                    "shard, so it needs queue.shard_by: user"
                )
                problems.append(self.raw.problem(("limits", "admission", index), message))
        for name, spec in self.tasks.items():
            for rule in (*self.rules, *self.execution_rules):
                if spec.cost > rule.policy.limit:
                    message = (
                        f"cost {spec.cost} is more than rule {rule.name!r} ever allows "
                        f"({rule.policy.limit}), so this task could never be admitted"
                    )
                    problems.append(self.raw.problem(("tasks", name, "cost"), message))
        for index, rule in enumerate(self.execution_rules):
            loc: Loc = ("limits", "execution", index)
            if rule.source not in EXECUTION_SOURCES:
                message = (
                    f"{rule.key_spec!r} is not known on a worker; "
                    f"use one of: {', '.join(EXECUTION_SOURCES)}"
                )
                problems.append(self.raw.problem((*loc, "key"), message))
            if not rule.limiter.executable:
                message = f"{rule.limiter.name!r} cannot limit execution; use a rate strategy"
                problems.append(self.raw.problem((*loc, "type"), message))

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
    def limiter_shards(self) -> Shards:
        """Where limiter keys live: in the queue's shards, unless on ``limits.redis_url``."""
        return UNSHARDED if self.settings.limits.redis_url else self.shards

    def per_shard_rules(self, rules: Sequence[Rule]) -> list[str]:
        """Rules counted once per shard: those keyed by anything but the user."""
        if self.limiter_shards.count == 1:
            return []
        return [rule.name for rule in rules if rule.source != "user"]

    @property
    def embedded(self) -> bool:
        return is_embedded(self.settings.redis.url)

    def resolved(self) -> dict[str, Any]:
        """The effective config, defaults filled in and secrets masked, for ``taskhub check``."""
        settings = self.settings

        def section(component: Component) -> dict[str, Any]:
            return {"type": component.name, **component.config.model_dump(mode="json")}

        def describe_rule(rule: Rule) -> dict[str, Any]:
            return {
                "name": rule.name,
                "key": rule.key_spec,
                "shadow": rule.shadow,
                **section(rule.limiter),
            }

        resolved = {
            "redis": settings.redis.model_dump(mode="json"),
            "plugins_dir": settings.plugins_dir,
            "plugins": list(settings.plugins),
            "server": section(self.server),
            "auth": section(self.authenticator),
            "limits": {
                **settings.limits.model_dump(mode="json", exclude={"admission", "execution"}),
                "admission": [describe_rule(rule) for rule in self.rules],
                "execution": [describe_rule(rule) for rule in self.execution_rules],
            },
            "queue": section(self.queue),
            "sinks": [section(sink) for sink in self.sinks],
            "tasks": {
                name: {**section(spec.handler), **job_options(spec), "cost": spec.cost}
                for name, spec in self.tasks.items()
            },
            "default_task": self.default_task,
            "metrics": settings.metrics.model_dump(mode="json"),
            "logging": settings.logging.model_dump(mode="json"),
            "dashboard": settings.dashboard.model_dump(mode="json"),
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

    async def run(
        self, role: Role, on_started: Callable[[asyncio.Event], None] | None = None
    ) -> None:
        """Start, serve until SIGINT/SIGTERM (or a worker failure), then stop cleanly.

        ``on_started(stop)`` runs once everything serves; setting ``stop`` shuts down
        as a signal does (a supervised process uses both: see :mod:`taskhub.cli.supervisor`).
        """
        self.check_role(role)
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        signals = (signal.SIGINT, signal.SIGTERM)
        for signum in signals:
            loop.add_signal_handler(signum, self._on_signal, signum, stop)
        worker: asyncio.Task[None] | None = None
        try:
            await self.start(role)
            if on_started is not None:
                on_started(stop)
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
        self._start_metrics(role)
        if role & Role.WORKER:
            self.runner.gate = self.build_execution_gate()
            for index, sink in enumerate(self.sinks):
                try:
                    await sink.open()
                except OSError as exc:
                    raise StartupError(f"sinks[{index}] ({sink.name}): {exc}") from exc
                self._started.append(f"sink:{index}")
        if role & Role.SERVER:
            self.pipeline = admission_pipeline(self.settings.redis)
            self.admission = self.build_admission()
            self._start_traffic()
            await self.server.start(self)
            self._started.append("server")
        await self._lifecycle("startup")
        self._log_banner(role)

    def _start_metrics(self, role: Role) -> None:
        """Bind the counters this role updates; a worker alone also gets its own port."""
        metrics = self.settings.metrics
        if not metrics.enabled:
            return
        if role & Role.SERVER:
            self.request_metrics = RequestMetrics(self.rules)
            self.queue_depth = QueueDepth(self.queue, metrics.depth_timeout)
        if role & Role.WORKER:
            self.job_metrics = JobMetrics(self.tasks)
        if role is Role.WORKER:
            self._exporter = WorkerExporter(metrics.worker_host, metrics.worker_port)
            self._exporter.start()
            self._started.append("metrics")

    def _start_traffic(self) -> None:
        """Count admissions for the dashboard: only while it is on, so off costs nothing."""
        if not self.settings.dashboard.enabled:
            return
        assert self.redis is not None
        redis = self.settings.redis
        prefix = traffic_prefix(redis.key_prefix, redis.cluster)
        self.traffic = TrafficRecorder(self.redis, prefix, self.rules)
        self.traffic.start()
        self._started.append("traffic")

    def connect_limiter_redis(self) -> Redis | None:
        """A client on ``limits.redis_url``; None when the limiter shares the queue's Redis."""
        url = self.settings.limits.redis_url
        if not url:
            return None
        # Always one Redis: on a cluster the limiter's place is beside its jobs.
        single = {"url": url, "cluster": False, "nodes": []}
        return connect(self.settings.redis.model_copy(update=single))

    def build_execution_gate(self) -> ExecutionGate | None:
        if not self.execution_rules:
            return None
        self.limiter_redis = self.limiter_redis or self.connect_limiter_redis()
        limits = self.settings.limits
        return ExecutionGate(
            self.limiter_redis or self.redis,
            self.execution_rules,
            self.settings.redis.key_prefix,
            limits.fail_mode,
            self.limiter_shards,
        )

    def build_limits_admin(self) -> LimitsAdmin:
        """Show and reset rule state, on the Redis the rules keep it on."""
        self.limiter_redis = self.limiter_redis or self.connect_limiter_redis()
        if self.limiter_redis is None:
            self.redis = self.redis or self.connect_redis()
        return LimitsAdmin(
            self.limiter_redis or self.redis,
            self.rules,
            self.execution_rules,
            self.settings.redis.key_prefix,
            deny_cache=self.admission.deny_cache if self.admission else None,
            shards=self.limiter_shards,
        )

    def build_admission(self) -> Admission:
        assert self.redis is not None
        limits = self.settings.limits
        cache = limits.deny_cache
        self.limiter_redis = self.limiter_redis or self.connect_limiter_redis()
        return Admission(
            self.redis,
            self.rules,
            self.queue,
            self.settings.redis.key_prefix,
            limiter_redis=self.limiter_redis,
            fail_mode=limits.fail_mode,
            deny_cache=DenyCache(cache.max_keys) if cache.enabled else None,
            pipeline=self.pipeline,
            shards=self.limiter_shards,
        )

    async def stop(self, worker: asyncio.Task[None] | None = None) -> None:
        """Stop what started, in reverse order; safe to call after a failed start."""
        with contextlib.suppress(Exception):
            await self._lifecycle("shutdown")
        if "server" in self._started:
            await self.server.stop()
        if "traffic" in self._started and self.traffic is not None:
            await self.traffic.stop()  # after the server: the last requests' counts too
            self.traffic = None
        if worker is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await worker
        for index, sink in enumerate(self.sinks):
            if f"sink:{index}" in self._started:
                try:
                    await sink.close()
                except Exception:
                    logger.exception("sinks[%d] (%s) failed to close", index, sink.name)
        if "metrics" in self._started and self._exporter is not None:
            await asyncio.to_thread(self._exporter.stop)
            self._exporter = None
        if "queue" in self._started:
            await self.queue.close()
        for client in (self.redis, self.limiter_redis):
            if client is not None:
                await client.aclose()
        if self.pipeline is not None:
            await self.pipeline.close()
            self.pipeline = None
        self.redis = self.limiter_redis = None
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
            for rule in self.rules:
                shadow = " (shadow)" if rule.shadow else ""
                logger.info(
                    "limit %s per %s%s: %s",
                    rule.name,
                    rule.key_spec,
                    shadow,
                    _describe(rule.limiter),
                )
            logger.info("auth: %s", self.authenticator.summary())
            logger.info("listening on %s", self.server.address)
        running = [*(self.rules if role & Role.SERVER else ())]
        running += self.execution_rules if role & Role.WORKER else []
        per_shard = self.per_shard_rules(running)
        if per_shard:
            logger.warning(
                "rules %s are not keyed by user, so with queue.shards %d each shard counts "
                "them apart: their limits apply per shard (divide them by %d, or set "
                "limits.redis_url for one counter)",
                ", ".join(per_shard),
                self.shards.count,
                self.shards.count,
            )
        if role & Role.WORKER:
            logger.info("queue: %s", _describe(self.queue))
            logger.info("sinks: %s", ", ".join(_describe(s) for s in self.sinks) or "none")
        if self._exporter is not None:
            logger.info("metrics on %s", self._exporter.address)
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
