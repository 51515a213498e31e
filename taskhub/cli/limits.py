"""``taskhub limits show | reset CONFIG KEY``: one key's rate-limit state, under every rule.

KEY is whatever rules count by: a user id, a client IP, a header's value, a task
name. ``show`` changes nothing; ``reset`` deletes that key's state (what it
leaves alone, and why, is in :mod:`taskhub.limits.admin`).
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

import click
import orjson

from taskhub.cli.group import ActionGroup, columns, refuse_embedded
from taskhub.hub.kernel import Hub
from taskhub.limits.admin import (
    LimitsAdmin,
    RuleReset,
    RuleState,
    show_body,
)


@asynccontextmanager
async def opened_admin(path: str) -> AsyncIterator[LimitsAdmin]:
    hub = Hub.from_file(path)
    settings = hub.settings
    setting = "limits.redis_url" if settings.limits.redis_url else "redis.url"
    url = settings.limits.redis_url or settings.redis.url
    refuse_embedded(path, setting, url, "rate-limit counters")
    admin = hub.build_limits_admin()
    try:
        yield admin
    finally:
        await admin.redis.aclose()


limits = ActionGroup("limits", "show or reset one key's rate-limit state", opened_admin)


F = TypeVar("F", bound=Callable[..., object])


def key_arguments(action: F) -> F:
    """KEY and --rule, which every action takes."""
    key_help = "what rules count by: a user id, IP, header value or task name"
    action = click.option("--rule", metavar="NAME", help="only this rule")(action)
    return click.argument("key", metavar="KEY", help=key_help)(action)


def no_rules(admin: LimitsAdmin, rule: str | None) -> bool:
    """Say so when the config limits nothing (a rule name still gets its error)."""
    if admin.rules or rule is not None:
        return False
    config = click.get_current_context().params["config"]
    sys.stdout.write(
        f"{config} has no rate limits: limits.admission and limits.execution are empty\n"
    )
    return True


@limits.action("print a key's state under every rule; changes nothing")
@key_arguments
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")
async def show(admin: LimitsAdmin, key: str, rule: str | None, as_json: bool) -> int:
    states = await admin.show(key, rule)
    if as_json:
        body = show_body(key, states)
        sys.stdout.write(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode() + "\n")
    elif not no_rules(admin, rule):
        sys.stdout.write(state_table(states))
    return 0


def state_table(states: list[RuleState]) -> str:
    rules = [("RULE", "STAGE", "TYPE", "BY", "LIMIT", "REMAINING", "RESET", "NEXT REQUEST")]
    keys = [("REDIS KEY", "TTL")]
    for state in states:
        rule = state.rule.rule
        rules.append(
            (
                rule.name,
                state.rule.stage,
                rule.limiter.name,
                rule.key_spec,
                str(state.limit),
                str(state.remaining),
                duration(state.reset_ms),
                next_request(state),
            )
        )
        keys.extend((k.key, ttl(k.ttl_ms)) for k in state.keys)
    return "\n".join([*columns(rules), "", *columns(keys)]) + "\n"


def next_request(state: RuleState) -> str:
    """Whether a request of cost 1 would pass now, and if not for how long it would not."""
    if state.retry_ms == 0:
        return "admitted"
    verdict = "never admitted" if state.retry_ms < 0 else f"refused for {duration(state.retry_ms)}"
    return f"{verdict} (shadow: admitted)" if state.rule.rule.shadow else verdict


def duration(ms: int) -> str:
    if ms == 0:
        return "0"
    if ms < 1_000:
        return f"{ms} ms"
    return f"{ms / 1000:.1f}".removesuffix(".0") + " s"


def ttl(ms: int) -> str:
    return {-2: "absent", -1: "no expiry"}.get(ms) or duration(ms)


@limits.action("delete a key's state under every rule (or one)")
@key_arguments
async def reset(admin: LimitsAdmin, key: str, rule: str | None) -> int:
    resets = await admin.reset(key, rule)
    if no_rules(admin, rule):
        return 0
    rows = [(r.rule.name, r.rule.stage, outcome(r)) for r in resets]
    total = sum(r.deleted for r in resets)
    sys.stdout.write("\n".join(columns(rows)) + f"\ndeleted {total} key(s) for {key!r}\n")
    return 0


def outcome(reset: RuleReset) -> str:
    if reset.kept:
        return f"kept: {reset.kept} (--rule {reset.rule.name})"
    return f"deleted {reset.deleted} key(s)"
