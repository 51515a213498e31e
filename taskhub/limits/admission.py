"""Admission: a policy's rate-limit decision and the enqueue, in one Lua script and one round trip.

The script (built in :mod:`taskhub.limits.policy`) checks every rule first and writes
only once the outcome is known, so there is no half state: a 200 means the job
is stored and every rule charged; a refusal charges nothing (a refusing rule
records only what its strategy's ``refuse`` defines, such as a block); a full
queue charges nothing; an error changes nothing. A retried call with the same
job id (an Idempotency-Key) finds the job already stored and charges nothing.

With ``limits.redis_url`` the limiter keeps its state on another Redis: the
rules are then decided there first (with a fail mode for when it is down) and
the job queued second, so a queue failure after the decision leaves that
decision's charge in place. One Redis for both is the all-or-nothing setup.

A sharded queue (:mod:`taskhub.store.sharding`) keeps each decision's limiter keys in
the user's home shard. Jobs placed by user go there too: still one script.
Jobs placed in turn may go elsewhere, so they are decided and queued in two
steps, as with ``limits.redis_url``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from taskhub.components import QueueBackend
from taskhub.errors import BackendUnavailable, UnstorablePayload
from taskhub.jobs import TaskSpec
from taskhub.limits.deny_cache import DenyCache
from taskhub.limits.fail_modes import FailMode, FailModeScript
from taskhub.limits.policy import (
    Outcome,
    RequestContext,
    Rule,
    RuleResult,
    build_script,
    parse_rules,
)
from taskhub.limits.shadow import ShadowLog
from taskhub.store.cluster_router import ClusterPipeline
from taskhub.store.outage import OutageLog
from taskhub.store.pipeline import BatchScriptRunner, RedisPipeline, ScriptCall, ScriptRunner
from taskhub.store.sharding import UNSHARDED, Shards

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Decision:
    outcome: Outcome
    job_id: str
    now_ms: int
    rules: tuple[RuleResult, ...]
    cached: bool = False  # answered by this process's deny cache, without Redis
    degraded: bool = False  # decided by the fail mode: the limiter's Redis was unreachable
    # Worked out once here: a response reads them several times.
    refusing: tuple[RuleResult, ...] = field(init=False)
    deciding: RuleResult | None = field(init=False)

    def __post_init__(self) -> None:
        rules = self.rules
        if len(rules) == 1:  # one rule, the common policy: no generator to run
            refusing: tuple[RuleResult, ...] = rules if rules[0].refuses else ()
        else:
            refusing = tuple(r for r in rules if r.refuses)
        object.__setattr__(self, "refusing", refusing)
        object.__setattr__(self, "deciding", _deciding(self.rules, refusing))


def _deciding(rules: tuple[RuleResult, ...], refusing: tuple[RuleResult, ...]) -> RuleResult | None:
    """The rule a client most needs to hear about: the refusal to wait out longest,
    or else the rule closest to its limit."""
    if refusing:
        return refusing[0] if len(refusing) == 1 else max(refusing, key=lambda r: r.retry_ms)
    if len(rules) <= 1:
        return rules[0] if rules else None
    return min(rules, key=lambda r: r.remaining / max(r.policy.limit, 1))


UNDECIDED = BackendUnavailable("not decided yet")  # a placeholder, always replaced


@dataclass(frozen=True, slots=True)
class Ask:
    """One submission to decide: what :meth:`Admission.admit` takes, for a batch."""

    spec: TaskSpec
    request: RequestContext
    payload: Any
    job_id: str | None = None
    priority: int | None = None  # None: the task's
    run_at: float | None = None  # epoch s; None: at once


@dataclass(slots=True)  # not frozen: made on every request, and frozen costs its __init__
class _Call:
    """One admission's script call, made ready before anything is sent."""

    job_id: str
    rule_keys: list[str]
    args: list[str]
    job_keys: list[str]
    job_args: list[str | bytes]
    subjects: list[str]
    cost: int
    sent_at: float
    use_cache: bool

    @property
    def keys(self) -> list[str]:
        return [*self.rule_keys, *self.job_keys]

    @property
    def all_args(self) -> list[str | bytes]:
        return [*self.args, *self.job_args]


class Admission:
    """Admits tasks for one policy in front of one queue."""

    def __init__(
        self,
        redis: Redis,
        rules: Sequence[Rule],
        queue: QueueBackend,
        key_prefix: str,
        *,
        limiter_redis: Redis | None = None,
        fail_mode: FailMode = "closed",
        deny_cache: DenyCache | None = None,
        pipeline: RedisPipeline | ClusterPipeline | None = None,
        shards: Shards = UNSHARDED,
    ) -> None:
        self.rules = tuple(rules)
        self.queue = queue
        self.key_prefix = key_prefix
        # Where limiter keys live: None keeps them all under key_prefix (no shards).
        self.shards = shards
        self._prefixes = shards.key_prefixes(key_prefix) if shards.tagged else None
        self.deny_cache = deny_cache
        self._cacheable = tuple(not r.shadow and r.limiter.deny_cacheable for r in self.rules)
        self._shadow = ShadowLog(logger)
        self._outage = OutageLog("Redis (admission)", logger)
        self.split = limiter_redis is not None or shards.split
        self.source = build_script((), queue) if self.split else build_script(self.rules, queue)
        # The pipelined runner also sends a batch in one round trip; redis-py's does not.
        self._batch: BatchScriptRunner | None = (
            None if pipeline is None else pipeline.script(self.source)
        )
        self._script: ScriptRunner = self._batch or redis.register_script(self.source)
        if self.split:
            self._limit = FailModeScript(
                limiter_redis or redis, build_script(self.rules, None), fail_mode, "limiter"
            )

    def rule_keys(self, request: RequestContext) -> list[str]:
        subjects = [rule.subject(request) for rule in self.rules]
        return self._keys(subjects, self.key_prefix_for(request.user_id))

    def key_prefix_for(self, user_id: str) -> str:
        """Where the user's decisions keep their limiter keys: his home shard, if sharded."""
        if self._prefixes is None:
            return self.key_prefix
        return self._prefixes[self.shards.shard_for(user_id)]

    def _keys(self, subjects: list[str], prefix: str) -> list[str]:
        pairs = zip(self.rules, subjects, strict=True)
        return [k for rule, subject in pairs for k in rule.keys(prefix, subject)]

    async def admit(
        self,
        spec: TaskSpec,
        request: RequestContext,
        payload: Any,
        *,
        job_id: str | None = None,
        cost: int | None = None,
        now_ms: int | None = None,
        priority: int | None = None,
        run_at: float | None = None,
    ) -> Decision:
        """Decide and, if admitted, enqueue. Raises BackendUnavailable when Redis is down.

        ``job_id`` makes the call idempotent; ``cost`` overrides the task's; ``now_ms``
        overrides the Redis clock (only tests of the limiter maths use it, and it
        bypasses the deny cache); ``priority`` overrides the task's default; ``run_at``
        (epoch s) delays the job. A call with a ``job_id`` is never answered from the
        deny cache: it may retry a job already admitted, which must replay as admitted
        however far over the limit its user is now, and only Redis knows.
        """
        call = self._prepare(
            spec,
            request,
            payload,
            job_id,
            cost=cost,
            now_ms=now_ms,
            priority=priority,
            run_at=run_at,
        )
        if isinstance(call, Decision):
            return call
        if self.split:
            decision = await self._admit_split(call)
        else:
            reply = await self._run(call.keys, call.all_args)
            decision = self._decision(reply, call.job_id)
        return self._settled(call, decision)

    async def admit_many(self, asks: Sequence[Ask]) -> list[Decision | Exception]:
        """Decide each ask in order, each seeing the charges of those before it.

        On the pipelined connection (a server's) the scripts leave in one write and
        come back in one read: one round trip for the whole batch, or one per master,
        concurrently, on a cluster. Each script is the single admission's, so each ask
        is as atomic as a single one. An ask that cannot be decided has its exception
        in its place: UnstorablePayload (nothing sent for it) or BackendUnavailable
        (its Redis was unreachable: like a single call that failed, it may or may not
        have run if the connection dropped with the write in flight).

        A split limiter (``limits.redis_url``, shards placed in turn) decides then
        queues in two steps, as for one ask: every decision in one round trip to the
        limiter's Redis (one by one if that is a cluster), then the admitted jobs in one.
        """
        batch = self._batch
        if batch is None:
            return [await self._admit_alone(ask) for ask in asks]
        results: list[Decision | Exception] = []
        calls: list[tuple[int, _Call]] = []
        for ask in asks:
            try:
                call = self._prepare(
                    ask.spec,
                    ask.request,
                    ask.payload,
                    ask.job_id,
                    priority=ask.priority,
                    run_at=ask.run_at,
                )
            except UnstorablePayload as exc:
                results.append(exc)
                continue
            if isinstance(call, Decision):  # the deny cache's refusal
                results.append(call)
                continue
            calls.append((len(results), call))
            results.append(UNDECIDED)
        if not calls:
            return results
        if self.split:
            decided = await self._decide_split(calls)
        else:
            decided = await self._send(batch, [(c.keys, c.all_args) for _, c in calls], calls)
        for (index, call), decision in zip(calls, decided, strict=True):
            results[index] = (
                self._settled(call, decision) if isinstance(decision, Decision) else decision
            )
        return results

    async def _send(
        self,
        batch: BatchScriptRunner,
        sent: list[ScriptCall],
        calls: Sequence[tuple[int, _Call]],
        rules: Sequence[tuple[RuleResult, ...] | None] = (),
        degraded: bool = False,
    ) -> list[Decision | Exception]:
        """Each call's decision from its script's reply, or BackendUnavailable. ``rules``:
        the limiter's results already decided for each (a split limiter), else None."""
        try:
            replies = await batch.many(sent)
        except Exception as exc:  # as for one call: whatever failed, Redis is "unavailable"
            replies = [exc] * len(sent)
        decided: list[Decision | Exception] = []
        failed = False
        for index, ((_, call), reply) in enumerate(zip(calls, replies, strict=True)):
            if isinstance(reply, Exception):
                failed = True
                self._outage.absorb(reply)
                error = BackendUnavailable("Redis is unreachable")
                error.__cause__ = reply
                decided.append(error)
                continue
            known = rules[index] if rules else None
            if known is None:
                decided.append(self._decision(reply, call.job_id))
            else:
                outcome, now_ms = Outcome(int(reply[0])), int(reply[1])
                decided.append(Decision(outcome, call.job_id, now_ms, known, degraded=degraded))
        if not failed:
            self._outage.succeeded()
        return decided

    async def _decide_split(self, calls: list[tuple[int, _Call]]) -> list[Decision | Exception]:
        """A split limiter's batch: every decision in one round trip to the limiter, then
        the admitted jobs queued in one more (as a single submission, in two steps)."""
        try:
            limits, degraded = await self._limit.many([(c.rule_keys, c.args) for _, c in calls])
        except BackendUnavailable as exc:  # fail_mode closed: nothing decided
            return [exc] * len(calls)
        decided: list[Decision | Exception | None] = []
        queued: list[tuple[int, _Call]] = []
        known: list[tuple[RuleResult, ...]] = []
        for (index, call), reply in zip(calls, limits, strict=True):
            rules = () if reply is None else parse_rules(self.rules, reply)
            if reply is not None and Outcome(int(reply[0])) is Outcome.REFUSED:
                now_ms = int(reply[1])
                refused = Decision(Outcome.REFUSED, call.job_id, now_ms, rules, degraded=degraded)
                decided.append(refused)
                continue
            decided.append(None)
            queued.append((index, call))
            known.append(rules)
        if queued:
            assert self._batch is not None
            sent: list[ScriptCall] = [(c.job_keys, c.all_args) for _, c in queued]
            outcomes = iter(await self._send(self._batch, sent, queued, known, degraded))
            decided = [next(outcomes) if d is None else d for d in decided]
        return [d for d in decided if d is not None]

    async def _admit_alone(self, ask: Ask) -> Decision | Exception:
        try:
            return await self.admit(
                ask.spec,
                ask.request,
                ask.payload,
                job_id=ask.job_id,
                priority=ask.priority,
                run_at=ask.run_at,
            )
        except (UnstorablePayload, BackendUnavailable) as exc:
            return exc

    def _prepare(
        self,
        spec: TaskSpec,
        request: RequestContext,
        payload: Any,
        job_id: str | None,
        *,
        cost: int | None = None,
        now_ms: int | None = None,
        priority: int | None = None,
        run_at: float | None = None,
    ) -> _Call | Decision:
        """The script call for a submission, or the deny cache's refusal that spares it."""
        cost = spec.cost if cost is None else cost
        subjects = [rule.subject(request) for rule in self.rules]
        use_cache = self.deny_cache is not None and now_ms is None
        sent_at = DenyCache.clock()
        if use_cache and job_id is None:
            cached = self._cached_refusal(subjects, cost, sent_at)
            if cached is not None:
                return cached
        prefix = self.key_prefix_for(request.user_id)
        holds = [
            rule.keys(prefix, subject)[0]
            for rule, subject in zip(self.rules, subjects, strict=True)
            if rule.limiter.holds_slot
        ]
        priority = spec.priority if priority is None else priority
        job = self.queue.prepare(
            spec, request.user_id, payload, job_id, holds, priority=priority, run_at=run_at
        )
        args = ["" if now_ms is None else str(now_ms), str(cost), str(self.queue.max_depth)]
        args.append(job.job_id)
        rule_keys = self._keys(subjects, prefix)
        return _Call(
            job.job_id,
            rule_keys,
            args,
            job.keys,
            job.args,
            subjects,
            cost,
            sent_at,
            use_cache,
        )

    def _settled(self, call: _Call, decision: Decision) -> Decision:
        """Remember a refusal in the deny cache and log shadow refusals, once decided."""
        if len(decision.rules) == len(self.rules):  # empty when fail_mode open skipped them
            if call.use_cache and decision.outcome is Outcome.REFUSED and not decision.degraded:
                self._remember(decision, call.subjects, call.cost, call.sent_at)
            self._shadow.note(decision.rules, call.subjects)
        return decision

    async def _admit_split(self, call: _Call) -> Decision:
        limits, degraded = await self._limit(call.rule_keys, call.args)
        rules: tuple[RuleResult, ...] = ()
        job_id = call.job_id
        if limits is not None:  # None: fail_mode open during an outage, nothing decided
            rules = parse_rules(self.rules, limits)
            if Outcome(int(limits[0])) is Outcome.REFUSED:
                return Decision(Outcome.REFUSED, job_id, int(limits[1]), rules, degraded=degraded)
        reply = await self._run(call.job_keys, [*call.args, *call.job_args])
        return Decision(Outcome(int(reply[0])), job_id, int(reply[1]), rules, degraded=degraded)

    async def _run(self, keys: list[Any], args: list[Any]) -> list[Any]:
        try:
            reply: list[Any] = await self._script(keys=keys, args=args)
        except Exception as exc:
            self._outage.absorb(exc)
            raise BackendUnavailable("Redis is unreachable") from exc
        self._outage.succeeded()
        return reply

    def _decision(self, reply: list[Any], job_id: str) -> Decision:
        return Decision(
            Outcome(int(reply[0])), job_id, int(reply[1]), parse_rules(self.rules, reply)
        )

    def _cached_refusal(self, subjects: list[str], cost: int, now: float) -> Decision | None:
        assert self.deny_cache is not None
        for rule, subject, cacheable in zip(self.rules, subjects, self._cacheable, strict=True):
            if not cacheable:
                continue
            entry = self.deny_cache.lookup(rule.name, subject, cost, now)
            if entry is not None:
                elapsed_ms = int((now - entry.sent_at) * 1000)
                left_ms = max(1, entry.result.retry_ms - elapsed_ms)
                reset_ms = max(left_ms, entry.result.reset_ms - elapsed_ms)
                r = entry.result
                result = RuleResult(r.name, r.policy, r.allowed, r.shadow, 0, reset_ms, left_ms)
                wall_ms = int(time.time() * 1000)
                return Decision(Outcome.REFUSED, "", wall_ms, (result,), cached=True)
        return None

    def _remember(self, decision: Decision, subjects: list[str], cost: int, sent_at: float) -> None:
        assert self.deny_cache is not None
        for result, subject, cacheable in zip(
            decision.rules, subjects, self._cacheable, strict=True
        ):
            if cacheable and result.refuses:
                self.deny_cache.remember(subject, result, cost, sent_at)
