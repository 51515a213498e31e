"""Rules that span several config keys, checked once every component is built.

Each model validates its own keys; these are the combinations no one model can
see: a fail mode that needs a second Redis, a strategy that must sit beside the
queue's jobs, a task that costs more than a rule ever allows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pydantic import ValidationError

from taskhub.config.models import Settings
from taskhub.config.paths import Loc
from taskhub.config.raw import RawConfig
from taskhub.errors import Problem
from taskhub.jobs import TaskSpec
from taskhub.limits.policy import Rule
from taskhub.store.sharding import Shards

# What a worker knows about a job: rules keyed on the client (ip, headers) cannot apply.
EXECUTION_SOURCES = ("user", "task", "constant")


def cross_key_problems(
    settings: Settings,
    raw: RawConfig,
    *,
    rules: Sequence[Rule],
    execution_rules: Sequence[Rule],
    shards: Shards,
) -> list[Problem]:
    problems: list[Problem] = []
    limits = settings.limits
    if limits.fail_mode != "closed" and not limits.redis_url:
        message = (
            f"{limits.fail_mode!r} needs limits.redis_url: with one Redis for the limiter "
            "and the queue, nothing can be queued while it is down, so every mode answers 503"
        )
        problems.append(raw.problem(("limits", "fail_mode"), message))
    for index, rule in enumerate(rules):
        if not rule.limiter.holds_slot:
            continue
        if limits.redis_url:
            message = (
                f"{rule.limiter.name!r} keeps its slots beside the queue's jobs, so it "
                "needs the limiter on the queue's Redis: remove limits.redis_url"
            )
            problems.append(raw.problem(("limits", "admission", index), message))
        elif shards.split:
            message = (
                f"{rule.limiter.name!r} keeps its slots beside the job, in the user's "
                "shard, so it needs queue.shard_by: user"
            )
            problems.append(raw.problem(("limits", "admission", index), message))
    for name, task in settings.tasks.items():
        for rule in (*rules, *execution_rules):
            if task.cost > rule.policy.limit:
                message = (
                    f"cost {task.cost} is more than rule {rule.name!r} ever allows "
                    f"({rule.policy.limit}), so this task could never be admitted"
                )
                problems.append(raw.problem(("tasks", name, "cost"), message))
    for index, rule in enumerate(execution_rules):
        loc: Loc = ("limits", "execution", index)
        if rule.source not in EXECUTION_SOURCES:
            message = (
                f"{rule.key_spec!r} is not known on a worker; "
                f"use one of: {', '.join(EXECUTION_SOURCES)}"
            )
            problems.append(raw.problem((*loc, "key"), message))
        if not rule.limiter.executable:
            message = f"{rule.limiter.name!r} cannot limit execution; use a rate strategy"
            problems.append(raw.problem((*loc, "type"), message))
    if settings.default_task not in settings.tasks:
        defined = ", ".join(sorted(settings.tasks))
        message = f"{settings.default_task!r} is not in tasks (defined: {defined})"
        problems.append(raw.problem(("default_task",), message))
    return problems


def schedule_problems(
    settings: Settings, raw: RawConfig, tasks: Mapping[str, TaskSpec]
) -> list[Problem]:
    """What no one schedule can see: its task missing, its payload not what the task
    takes (as a POST /task would be refused), a name two schedules share."""
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for index, schedule in enumerate(settings.schedules):
        loc: Loc = ("schedules", index)
        if schedule.name in seen:
            message = (
                f"{schedule.name!r} is already the name of schedules[{seen[schedule.name]}]: "
                "each schedule needs a name of its own (it names its ticks' jobs)"
            )
            problems.append(raw.problem((*loc, "name"), message))
        seen.setdefault(schedule.name, index)
        if schedule.task not in settings.tasks:
            defined = ", ".join(sorted(settings.tasks))
            message = f"{schedule.task!r} is not in tasks (defined: {defined})"
            problems.append(raw.problem((*loc, "task"), message))
            continue
        spec = tasks.get(schedule.task)
        model = spec.handler.Payload if spec is not None else None
        if model is None:
            continue
        try:
            model.model_validate(schedule.payload or {})
        except ValidationError as exc:
            for error in exc.errors(include_url=False):
                where = (*loc, "payload", *error["loc"])
                problems.append(raw.problem(where, f"{error['msg']} (task {schedule.task!r})"))
    return problems
