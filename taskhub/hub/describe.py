"""The hub in words: the resolved config for ``taskhub check``, and the start-up banner."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

from taskhub.components import Component
from taskhub.config.models import Settings
from taskhub.config.raw import RawConfig
from taskhub.config.secrets import mask_secrets, mask_url
from taskhub.context import Role
from taskhub.hub.build import Components, job_options, per_shard_rules
from taskhub.hub.connections import Endpoints
from taskhub.limits.policy import Rule
from taskhub.store.urls import is_embedded
from taskhub.version import __version__

logger = logging.getLogger("taskhub")


def resolved(settings: Settings, raw: RawConfig, hub: Components) -> dict[str, Any]:
    """The effective config, defaults filled in and secrets masked, for ``taskhub check``."""

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
        "server": section(hub.server),
        "auth": section(hub.authenticator),
        "limits": {
            **settings.limits.model_dump(mode="json", exclude={"admission", "execution"}),
            "admission": [describe_rule(rule) for rule in hub.rules],
            "execution": [describe_rule(rule) for rule in hub.execution_rules],
        },
        "queue": section(hub.queue),
        "sinks": [section(sink) for sink in hub.sinks],
        "tasks": {
            name: {
                **section(spec.handler),  # type: ignore[arg-type]
                **job_options(spec),
                "cost": spec.cost,
                "priority": spec.priority,
            }
            for name, spec in hub.tasks.items()
        },
        "default_task": hub.default_task,
        "metrics": settings.metrics.model_dump(mode="json"),
        "logging": settings.logging.model_dump(mode="json"),
        "dashboard": settings.dashboard.model_dump(mode="json"),
        "schedules": [schedule.model_dump(mode="json") for schedule in settings.schedules],
    }
    masked: dict[str, Any] = mask_secrets(resolved, (), raw)
    return masked


def connections(settings: Settings, endpoints: Endpoints) -> dict[str, Any]:
    """How each Redis is reached, for ``taskhub check``: what its URL and ``redis:`` say,
    redis-py's defaults filled in (TLS verification, hostname check), secrets masked."""
    shown: dict[str, Any] = {}
    for key, url, endpoint in (
        ("redis.url", settings.redis.url, endpoints.redis),
        ("limits.redis_url", settings.limits.redis_url, endpoints.limiter),
    ):
        if endpoint is not None:
            shown[key] = endpoint.describe()
        elif url:
            shown[key] = "embedded (memory://): inside this process, no connection"
    return shown


def log_banner(
    settings: Settings,
    hub: Components,
    role: Role,
    address: str | None,
    metrics_address: str | None = None,
) -> None:
    """What this process runs, once it runs: one line per fact, no secret in any."""
    roles = "+".join(r.name.lower() for r in (Role.SERVER, Role.WORKER) if r & role and r.name)
    logger.info("taskhub %s started (%s)", __version__, roles)
    if is_embedded(settings.redis.url):
        logger.warning(
            "redis.url is memory://: limiter and queue run on embedded fakeredis inside "
            "this process. Single process only, and nothing survives a restart"
        )
    else:
        logger.info("redis: %s", mask_url(settings.redis.url))
    sentinel = settings.redis.sentinel
    if sentinel is not None:
        nodes = ", ".join(_address(url) for url in sentinel.nodes)
        logger.info("redis: master %r through sentinels %s", sentinel.service, nodes)
    if role & Role.SERVER:
        for rule in hub.rules:
            shadow = " (shadow)" if rule.shadow else ""
            logger.info(
                "limit %s per %s%s: %s", rule.name, rule.key_spec, shadow, describe(rule.limiter)
            )
        logger.info("auth: %s", hub.authenticator.summary())
        if address is not None:
            logger.info("listening on %s", address)
        else:
            logger.info("serving the HTTP API through the host application (ASGI)")
    running = [*(hub.rules if role & Role.SERVER else ())]
    running += hub.execution_rules if role & Role.WORKER else []
    per_shard = per_shard_rules(settings, hub.shards, running)
    if per_shard:
        logger.warning(
            "rules %s are not keyed by user, so with queue.shards %d each shard counts "
            "them apart: their limits apply per shard (divide them by %d, or set "
            "limits.redis_url for one counter)",
            ", ".join(per_shard),
            hub.shards.count,
            hub.shards.count,
        )
    if role & Role.WORKER:
        logger.info("queue: %s", describe(hub.queue))
        logger.info("sinks: %s", ", ".join(describe(s) for s in hub.sinks) or "none")
    if metrics_address is not None:
        logger.info("metrics on %s", metrics_address)
    logger.info("tasks: %s (default: %s)", ", ".join(hub.tasks), hub.default_task)


def describe(component: Component) -> str:
    options = " ".join(f"{k}={v}" for k, v in component.config.model_dump().items())
    return f"{component.name} {options}".strip()


def _address(url: str) -> str:
    """host:port of a URL, nothing else of it (no login to mask)."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}"
