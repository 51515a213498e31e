"""Inspect and reset one key's rate-limit state, for every rule of both stages.

An operator needs to see why a client is refused, and to let it through again
after a mistake, without touching anyone else's state. ``show`` runs each
rule's own ``check`` at cost 0 (the state) and at cost 1 (would the next
request pass) in one read-only script, so looking charges and extends nothing.
``reset`` deletes the key's Redis keys in one transaction. Keys come from
``Rule.keys``, the code admission and workers use, so the key is escaped
exactly as they escape it.

``reset`` without a rule name leaves two kinds of state alone, because they are
not the key's own: a ``constant`` rule's counter (shared by everyone) and a
``concurrency`` rule's slots (each held by a job still admitted and unfinished;
deleting them would let the key run up to twice its limit at once, and they
free themselves as the jobs finish). Naming the rule resets it anyway.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NotRequired

from pydantic import with_config
from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from typing_extensions import TypedDict

from taskhub.errors import UsageError
from taskhub.limits.deny_cache import DenyCache
from taskhub.limits.execution import waiting_line
from taskhub.limits.policy import (
    CONSTANT_SUBJECT,
    FIELDS_PER_RULE,
    Outcome,
    Rule,
    build_script,
    parse_rules,
)
from taskhub.store.clients import redis_call
from taskhub.store.sharding import UNSHARDED, Shards

Stage = Literal["admission", "execution"]

# A request of this cost decides whether "the next request" would pass.
PROBE_COST = 1

# Reply: {outcome, now}, each rule at cost 0, each rule at the probe cost (ARGV[2]),
# then the PTTL of every key in KEYS order. Nothing is written.
SHOW_BODY = f"""
local out = reply({Outcome.ADMITTED:d}, check_all(0))
local probe = reply({Outcome.ADMITTED:d}, check_all(cost))
for i = 3, #probe do out[#out + 1] = probe[i] end
for i = 1, #KEYS do out[#out + 1] = redis.call('PTTL', KEYS[i]) end
return out
"""

NO_TTL, ABSENT = -1, -2  # PTTL's answers for a key without expiry and for no key


# What ``show`` and ``reset`` write, for ``--json`` and the admin endpoint alike;
# taskhub.web.openapi documents the endpoint from these very classes.
@with_config(extra="forbid")
class KeyStateJson(TypedDict):
    key: str
    exists: bool
    ttl_ms: int | None


@with_config(extra="forbid")
class RuleStateJson(TypedDict):
    rule: str
    stage: Stage
    type: str
    by: str
    shared: bool
    shadow: bool
    limit: int
    remaining: int
    reset_ms: int
    retry_after_ms: int
    used: bool
    redis_keys: list[KeyStateJson]


@with_config(extra="forbid")
class RuleResetJson(TypedDict):
    rule: str
    stage: Stage
    deleted: NotRequired[int]
    kept: NotRequired[str]  # why a reset of every rule left it alone


@with_config(extra="forbid")
class LimitsShown(TypedDict):
    key: str
    rules: list[RuleStateJson]


@with_config(extra="forbid")
class LimitsReset(TypedDict):
    key: str
    deleted: int
    rules: list[RuleResetJson]


class UnknownRule(UsageError):
    """A rule name that no rule of either stage has."""

    def __init__(self, name: str, known: Sequence[str]) -> None:
        listed = ", ".join(known) or "(no rules are configured)"
        super().__init__(f"no rule named {name!r}; the rules are: {listed}")


@dataclass(frozen=True, slots=True)
class StagedRule:
    stage: Stage
    rule: Rule

    @property
    def name(self) -> str:
        return self.rule.name

    @property
    def shared(self) -> bool:
        """One counter for everyone, whatever the key."""
        return self.rule.source == "constant"

    def subject(self, key: str) -> str:
        """What this rule counts ``key`` under: the key itself, or the shared subject."""
        return CONSTANT_SUBJECT if self.shared else key

    def redis_keys(self, prefix: str, key: str) -> tuple[list[str], list[str]]:
        """The rule's own keys for ``key``, and the related ones (an execution waiting line)."""
        own = self.rule.keys(prefix, self.subject(key))
        return own, [waiting_line(own)] if self.stage == "execution" else []

    def kept_because(self) -> str:
        """Why a reset of every rule leaves this one alone; empty if it does not."""
        if self.shared:
            return "shared by every key; name the rule to reset it"
        if self.rule.limiter.holds_slot:
            return "slots held by unfinished jobs free as they finish; name the rule to free them"
        return ""


@dataclass(frozen=True, slots=True)
class KeyState:
    key: str
    ttl_ms: int  # NO_TTL, ABSENT, or milliseconds left

    def to_json(self) -> KeyStateJson:
        return {
            "key": self.key,
            "exists": self.ttl_ms != ABSENT,
            "ttl_ms": self.ttl_ms if self.ttl_ms >= 0 else None,
        }


@dataclass(frozen=True, slots=True)
class RuleState:
    """One rule's state for a key. ``retry_ms``: until a request of cost 1 would pass
    (0: it would pass now, -1: never)."""

    rule: StagedRule
    limit: int
    remaining: int
    reset_ms: int
    retry_ms: int
    keys: tuple[KeyState, ...]

    @property
    def used(self) -> bool:
        return any(k.ttl_ms != ABSENT for k in self.keys)

    def to_json(self) -> RuleStateJson:
        rule = self.rule.rule
        return {
            "rule": rule.name,
            "stage": self.rule.stage,
            "type": rule.limiter.name,
            "by": rule.key_spec,
            "shared": self.rule.shared,
            "shadow": rule.shadow,
            "limit": self.limit,
            "remaining": self.remaining,
            "reset_ms": self.reset_ms,
            "retry_after_ms": self.retry_ms,
            "used": self.used,
            "redis_keys": [k.to_json() for k in self.keys],
        }


@dataclass(frozen=True, slots=True)
class RuleReset:
    """What a reset did to one rule: ``deleted`` keys, or why it ``kept`` them."""

    rule: StagedRule
    deleted: int = 0
    kept: str = ""

    def to_json(self) -> RuleResetJson:
        out: RuleResetJson = {"rule": self.rule.name, "stage": self.rule.stage}
        if self.kept:
            out["kept"] = self.kept
        else:
            out["deleted"] = self.deleted
        return out


class LimitsAdmin:
    """``show`` and ``reset`` over every rule, on the Redis that holds the limiter's state."""

    def __init__(
        self,
        redis: Redis,
        admission: Sequence[Rule],
        execution: Sequence[Rule],
        key_prefix: str,
        *,
        deny_cache: DenyCache | None = None,
        shards: Shards = UNSHARDED,
    ) -> None:
        self.redis = redis
        self.key_prefix = key_prefix
        self.shards = shards
        self.deny_cache = deny_cache  # this process's, forgotten on reset
        self.rules = tuple(
            [StagedRule("admission", r) for r in admission]
            + [StagedRule("execution", r) for r in execution]
        )
        self._scripts: dict[tuple[str, ...], AsyncScript] = {}

    def prefix(self, key: str) -> str:
        """Where ``key``'s state lives: a user's is in his home shard (see
        :mod:`taskhub.store.sharding`); with shards, rules keyed by anything else count per
        shard."""
        return self.shards.key_prefix(self.key_prefix, self.shards.shard_for(key))

    def select(self, name: str | None) -> tuple[StagedRule, ...]:
        """Every rule, or the one named; an unknown name lists the known ones."""
        if name is None:
            return self.rules
        chosen = tuple(r for r in self.rules if r.name == name)
        if not chosen:
            raise UnknownRule(name, [r.name for r in self.rules])
        return chosen

    async def show(self, key: str, rule: str | None = None) -> list[RuleState]:
        """Each chosen rule's state for ``key``, without writing anything."""
        chosen = self.select(rule)
        if not chosen:
            return []
        keys = [staged.redis_keys(self.prefix(key), key) for staged in chosen]
        # KEYS: every rule's own keys, in rule order (what the script's rules read), then the rest
        flat = [k for own, _ in keys for k in own] + [k for _, extra in keys for k in extra]
        args = ["", str(PROBE_COST), "0", ""]
        reply = await redis_call(self._script(chosen)(keys=flat, args=args))
        rules = [staged.rule for staged in chosen]
        width = len(rules) * FIELDS_PER_RULE
        state = parse_rules(rules, reply)
        probe = parse_rules(rules, reply[width:])  # shifted to start where parse_rules reads
        ttls = dict(zip(flat, map(int, reply[2 + 2 * width :]), strict=True))
        return [
            RuleState(
                staged,
                staged.rule.policy.limit,
                now.remaining,
                # a strategy may count a window from now even for no key; nothing is spent
                now.reset_ms if any(ttls[k] != ABSENT for k in own) else 0,
                0 if next_request.allowed else next_request.retry_ms,
                tuple(KeyState(k, ttls[k]) for k in [*own, *extra]),
            )
            for staged, now, next_request, (own, extra) in zip(
                chosen, state, probe, keys, strict=True
            )
        ]

    async def reset(self, key: str, rule: str | None = None) -> list[RuleReset]:
        """Delete ``key``'s state for each chosen rule, in one transaction."""
        chosen = self.select(rule)
        plan: list[tuple[StagedRule, list[str]]] = []
        kept: dict[str, str] = {}
        for staged in chosen:
            reason = "" if rule is not None else staged.kept_because()
            if reason:
                kept[staged.name] = reason
                continue
            own, extra = staged.redis_keys(self.prefix(key), key)
            plan.append((staged, [*own, *extra]))
        counts = await redis_call(self._delete([keys for _, keys in plan])) if plan else []
        deleted = {staged.name: int(n) for (staged, _), n in zip(plan, counts, strict=True)}
        if self.deny_cache is not None:
            for staged, _ in plan:
                self.deny_cache.forget(staged.name, staged.subject(key))
        return [
            RuleReset(staged, deleted.get(staged.name, 0), kept.get(staged.name, ""))
            for staged in chosen
        ]

    async def _delete(self, groups: list[list[str]]) -> list[int]:
        async with self.redis.pipeline(transaction=True) as pipe:
            for keys in groups:
                pipe.delete(*keys)
            return await pipe.execute()

    def _script(self, chosen: tuple[StagedRule, ...]) -> AsyncScript:
        names = tuple(r.name for r in chosen)
        script = self._scripts.get(names)
        if script is None:
            source = build_script([r.rule for r in chosen], None, body=SHOW_BODY)
            script = self._scripts[names] = self.redis.register_script(source)
        return script


def show_body(key: str, states: Sequence[RuleState]) -> LimitsShown:
    """``show`` as JSON, for ``--json`` and the admin endpoint alike."""
    return {"key": key, "rules": [state.to_json() for state in states]}


def reset_body(key: str, resets: Sequence[RuleReset]) -> LimitsReset:
    return {
        "key": key,
        "deleted": sum(r.deleted for r in resets),
        "rules": [r.to_json() for r in resets],
    }
