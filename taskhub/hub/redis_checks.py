"""What the config needs of its Redis servers, checked against what they say: at start-up,
before anything is admitted, and by ``taskhub check``.

- **Eviction.** taskhub's keys are state, not a cache: a Redis that evicts when full
  deletes queued jobs, job state or limiter state without a word. Every master must
  say ``noeviction`` (then a full Redis refuses writes: 503, nothing lost).
  ``redis.eviction: error`` refuses any other policy; a policy that cannot be read is
  a warning either way, since managed services that hide it would otherwise never start.
- **Shards on a cluster.** A shard is one hash slot, so fewer shards than masters
  leaves masters with none of the queue: ``cluster: true`` alone spreads nothing.
  This only warns: changing ``queue.shards`` moves every key, which only the operator
  can do safely (with the queue empty).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from taskhub.config.models import Settings
from taskhub.config.raw import RawConfig
from taskhub.errors import ConfigError, Problem
from taskhub.hub.connections import Endpoints
from taskhub.store.connection import ConnectionSettings
from taskhub.store.inspection import UNREACHABLE, MasterState, inspect
from taskhub.store.sharding import UNSHARDED, Shards

logger = logging.getLogger("taskhub")

JOBS = "queued jobs (they never run) and job state (status, retries, dead letters)"
# volatile-* policies evict only keys with a TTL: every limiter key, no queued job.
EXPIRING_JOBS = "finished jobs and dead letters before their ttl"
LIMITS = "limiter state (users are then admitted over their limits)"
DOCS = "see 'Running on managed and self-hosted Redis' in the docs"


@dataclass
class Findings:
    """What the servers said (one line per Redis), what to warn of, what to refuse."""

    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def log(self) -> None:
        for note in self.notes:
            logger.info("%s", note)
        for warning in self.warnings:
            logger.warning("%s", warning)

    def raise_if_refused(self, source: str) -> None:
        if self.problems:
            raise ConfigError(source, self.problems)


@dataclass(frozen=True)
class _Target:
    key: str  # the config key that names this Redis
    connection: ConnectionSettings
    jobs: bool  # the queue is there
    limits: bool  # the limiter's keys are there
    shards: Shards  # the queue's layout, on the cluster that holds it

    def losses(self, policy: str | None) -> str:
        """What ``policy`` can delete here; None (unknown) fears the worst."""
        volatile = policy is not None and policy.startswith("volatile-")
        lost = [EXPIRING_JOBS if volatile else JOBS] if self.jobs else []
        return ", and ".join(lost + [LIMITS] * self.limits)


async def check_redis(
    settings: Settings, raw: RawConfig, endpoints: Endpoints, shards: Shards
) -> Findings:
    """Ask every Redis the config names (each master of a cluster) at once."""
    targets = _targets(endpoints, shards)
    results = await asyncio.gather(
        *(inspect(target.connection, target.shards) for target in targets),
        return_exceptions=True,
    )
    findings = Findings()
    for target, result in zip(targets, results, strict=True):
        if isinstance(result, UNREACHABLE):  # a cluster no node of which answered
            unread = MasterState(target.connection.name, None, f"it did not answer ({result})")
            _eviction(settings, raw, target, [unread], findings)
        elif isinstance(result, BaseException):
            raise result
        else:
            _eviction(settings, raw, target, result, findings)
            _spread(target, result, findings)
    return findings


def _targets(endpoints: Endpoints, shards: Shards) -> list[_Target]:
    targets = []
    redis, limiter = endpoints.redis, endpoints.limiter
    # The limiter's own Redis, unless it is the queue's server under another URL (db).
    own_limiter = limiter is not None and (redis is None or limiter.name != redis.name)
    if redis is not None:
        layout = shards if redis.cluster else UNSHARDED
        targets.append(_Target("redis.url", redis, True, not own_limiter, layout))
    if limiter is not None and own_limiter:
        targets.append(_Target("limits.redis_url", limiter, False, True, UNSHARDED))
    return targets


def _eviction(
    settings: Settings,
    raw: RawConfig,
    target: _Target,
    masters: list[MasterState],
    findings: Findings,
) -> None:
    refuse = settings.redis.eviction == "error"
    said = ", ".join(f"{m.name} {m.policy or 'unknown'}" for m in masters)
    findings.notes.append(f"{target.key}: maxmemory-policy: {said}")
    for master in masters:
        if master.evicts:
            found = (
                f"maxmemory-policy is {master.policy} on {master.name} ({target.key}), not "
                "noeviction: when it reaches maxmemory, Redis deletes keys instead of refusing "
                f"writes, and can lose {target.losses(master.policy)}"
            )
            where = " (and on each replica the sentinels may promote)"
            fix = (
                "set maxmemory-policy noeviction"
                + (where if target.connection.sentinels is not None else "")
                + " (in redis.conf, or CONFIG SET maxmemory-policy noeviction then CONFIG "
                "REWRITE, or the hosted service's parameter of that name); a full Redis then "
                "refuses writes instead (POST /task answers 503) and keeps what it has"
            )
            if refuse:
                message = f"{found}. Fix: {fix}; or redis.eviction: warn to start anyway"
                findings.problems.append(raw.problem(("redis", "eviction"), message))
            else:
                findings.warnings.append(
                    f"{found}. Fix: {fix} (redis.eviction: error refuses to start on it)"
                )
        elif master.policy is None:
            findings.warnings.append(
                f"{target.key}: the eviction policy of {master.name} could not be checked: "
                f"{master.unread}. Make sure its maxmemory-policy is noeviction (a hosted "
                f"service lists it among its parameters): any other can lose {target.losses(None)}"
                + (" (redis.eviction: error refuses only a policy it could read)" if refuse else "")
            )


def _spread(target: _Target, masters: list[MasterState], findings: Findings) -> None:
    """On a cluster: warn when some master serves none of the queue's shards."""
    if not target.connection.cluster:
        return
    findings.notes.append(
        f"{target.key}: queue shards per master: "
        + ", ".join(f"{m.name} {len(m.shards)}" for m in masters)
    )
    idle = [m.name for m in masters if not m.shards]
    if not idle:
        return
    serving = [m.name for m in masters if m.shards]
    count = target.shards.count
    beside = ", and the limiter keys beside them," if target.limits else ""
    findings.warnings.append(
        f"queue.shards is {count} on a Redis Cluster of {len(masters)} masters: every queue "
        f"key{beside} is on {', '.join(serving) or 'no master'}; "
        f"{', '.join(idle)} serve none of them. Set queue.shards to a multiple of the "
        f"masters with room to grow (e.g. {2 * len(masters)}), while the queue is empty: "
        f"the shards' keys are new keys, and jobs left in the old ones are not moved ({DOCS})"
    )
