"""Build the components a config names, checking everything before anything runs.

Every problem is collected (an unknown component, a bad option, a cross-key rule
broken) and raised together as one ConfigError, each with its YAML path and line.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import ValidationError

from taskhub.components import (
    Authenticator,
    Component,
    Limiter,
    QueueBackend,
    Server,
    Sink,
    TaskHandler,
)
from taskhub.config.models import JOB_OPTIONS, ComponentSection, RuleSection, Settings, TaskSection
from taskhub.config.paths import Loc
from taskhub.config.problems import problems_from
from taskhub.config.raw import RawConfig
from taskhub.errors import ConfigError, Problem, UnknownComponentError
from taskhub.hookspecs import KINDS
from taskhub.hub.checks import cross_key_problems, schedule_problems
from taskhub.hub.connections import Endpoints
from taskhub.hub.plugins import PluginRegistry
from taskhub.jobs import TaskSpec
from taskhub.limits.policy import Rule
from taskhub.monitoring import tracing
from taskhub.store.sharding import UNSHARDED, Shards

C = TypeVar("C", bound=Component)


@dataclass(frozen=True)
class Components:
    """Everything the config names, built and validated."""

    rules: list[Rule]  # admission
    execution_rules: list[Rule]
    queue: QueueBackend
    shards: Shards  # the queue's key layout
    server: Server
    authenticator: Authenticator
    sinks: list[Sink]
    tasks: dict[str, TaskSpec]
    default_task: str
    endpoints: Endpoints  # how every connection reaches redis.url and limits.redis_url


def build_components(
    settings: Settings,
    raw: RawConfig,
    registry: PluginRegistry,
    server_overrides: Mapping[str, Any] | None = None,
) -> Components:
    problems: list[Problem] = []
    endpoints = Endpoints.read(settings, raw, problems)
    build = _Builder(raw, registry, problems)
    rules = _admission_rules(settings, raw, build, problems)
    execution = settings.limits.execution
    execution_rules = _rules(
        settings, raw, build, execution, where="execution", problems=problems, taken=rules
    )
    queue = build(QueueBackend, settings.queue, ("queue",))
    # On a cluster every key is tagged, even with one shard (taskhub.store.sharding).
    shards = queue.layout(cluster=settings.redis.cluster) if queue else UNSHARDED
    server = build(Server, settings.server, ("server",), server_overrides or {})
    authenticator = build(Authenticator, settings.auth, ("auth",))
    sinks = [build(Sink, s, ("sinks", i)) for i, s in enumerate(settings.sinks)]
    tasks: dict[str, TaskSpec] = {}
    for name, section in settings.tasks.items():
        handler = build(TaskHandler, section, ("tasks", name), default_type=name)
        if handler is not None:
            tasks[name] = TaskSpec(
                name, handler, **job_options(section), cost=section.cost, priority=section.priority
            )
    problems += cross_key_problems(
        settings, raw, rules=rules, execution_rules=execution_rules, shards=shards
    )
    problems += schedule_problems(settings, raw, tasks)
    if settings.tracing.enabled and (missing := tracing.missing()) is not None:
        problems.append(raw.problem(("tracing", "enabled"), missing))
    if problems:
        raise ConfigError(raw.source, problems)
    # No problem means every section built.
    assert queue is not None and server is not None and authenticator is not None
    return Components(
        rules=rules,
        execution_rules=execution_rules,
        queue=queue,
        shards=shards,
        server=server,
        authenticator=authenticator,
        sinks=[sink for sink in sinks if sink is not None],
        tasks=tasks,
        default_task=settings.default_task,
        endpoints=endpoints,
    )


def limiter_shards(settings: Settings, shards: Shards) -> Shards:
    """Where limiter keys live: in the queue's shards, unless on ``limits.redis_url``."""
    return UNSHARDED if settings.limits.redis_url else shards


def per_shard_rules(settings: Settings, shards: Shards, rules: Sequence[Rule]) -> list[str]:
    """Rules counted once per shard: those keyed by anything but the user."""
    if limiter_shards(settings, shards).count == 1:
        return []
    return [rule.name for rule in rules if rule.source != "user"]


def job_options(source: TaskSection | TaskSpec) -> dict[str, Any]:
    """A task's job options (retries, timeout, ...), from its config entry or its spec."""
    return {name: getattr(source, name) for name in JOB_OPTIONS}


def _admission_rules(
    settings: Settings, raw: RawConfig, build: _Builder, problems: list[Problem]
) -> list[Rule]:
    """``limits.admission``, or the ``limiter`` shorthand: one rule per user, named
    after its strategy."""
    limits, limiter = settings.limits, settings.limiter
    if limiter is not None and limits.admission is not None:
        message = "give either limiter (one rule per user) or limits.admission, not both"
        problems.append(raw.problem(("limiter",), message))
    if limits.admission is not None:
        return _rules(settings, raw, build, limits.admission, where="admission", problems=problems)
    strategy = build(Limiter, limiter or ComponentSection(), ("limiter",))
    if strategy is None:
        return []
    return [Rule.keyed(strategy.name, strategy, "user", shadow=limits.shadow)]


def _rules(
    settings: Settings,
    raw: RawConfig,
    build: _Builder,
    sections: list[RuleSection],
    *,
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
            problems.append(raw.problem((*loc, "name"), f"duplicate rule name {name!r}"))
        elif any(rule.name == name for rule in taken):
            message = (
                f"rule name {name!r} is also an admission rule's: rules keep their Redis "
                "state under their name, so each needs its own (set name:)"
            )
            problems.append(raw.problem((*loc, "name"), message))
        strategy = build(Limiter, section, loc)
        if strategy is None:
            continue
        shadow = section.shadow or settings.limits.shadow
        rules.append(Rule.keyed(name, strategy, section.key, shadow=shadow))
    return rules


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
    ) -> C | None:
        """The component, or None when its section has a problem (collected)."""
        kind = base.kind
        name = section.type or default_type or KINDS[kind].default or ""
        try:
            cls = self.registry.get(kind, name)
        except UnknownComponentError as exc:
            self.problems.append(self.raw.problem((*loc, "type"), str(exc)))
            return None
        options = {**section.options, **(overrides or {})}
        try:
            config = cls.Config.model_validate(options)
        except ValidationError as exc:
            self.problems.extend(problems_from(exc, cls.Config, loc, self.raw))
            return None
        if not issubclass(cls, base):  # the registry checked it; this tells mypy
            raise TypeError(f"{cls!r} is not a {base.__name__}")
        return cls(config)
