"""The kernel: a config's components, built and checked, and the factories that wire them.

``Hub.from_file`` loads the config and its plugins and builds every component it
names, raising one ConfigError listing every problem. Nothing connects yet:
:class:`taskhub.hub.runtime.Runtime` runs a hub in a process role, and the CLI's
one-shot commands use the factories here on their own.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from taskhub.components import Authenticator, QueueBackend, Server, Sink
from taskhub.config.loader import load_file
from taskhub.config.models import Settings, parse_settings
from taskhub.config.raw import RawConfig
from taskhub.context import Role
from taskhub.errors import UsageError
from taskhub.hub.build import build_components, limiter_shards, per_shard_rules
from taskhub.hub.connections import Connections
from taskhub.hub.describe import connections, resolved
from taskhub.hub.plugins import PluginRegistry, load_plugins
from taskhub.hub.redis_checks import check_redis
from taskhub.jobs import TaskSpec
from taskhub.limits.admin import LimitsAdmin
from taskhub.limits.admission import Admission
from taskhub.limits.deny_cache import DenyCache
from taskhub.limits.execution import ExecutionGate
from taskhub.limits.policy import Rule
from taskhub.store.sharding import Shards
from taskhub.store.urls import is_embedded
from taskhub.web.submission import SubmissionParser

__all__ = ["Hub", "Role"]


class Hub:
    """A loaded config: its settings, its plugins, its components and their connections."""

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
        self.components = build_components(settings, raw, registry, server_overrides)
        self.connections = Connections(settings, self.components.endpoints)
        self.submissions = SubmissionParser(
            self.tasks, self.default_task, self.components.queue.max_delay
        )

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

    # ----------------------------------------------------------------- what it holds

    @property
    def rules(self) -> list[Rule]:
        return self.components.rules

    @property
    def execution_rules(self) -> list[Rule]:
        return self.components.execution_rules

    @property
    def queue(self) -> QueueBackend:
        return self.components.queue

    @property
    def shards(self) -> Shards:
        return self.components.shards

    @property
    def server(self) -> Server:
        return self.components.server

    @property
    def authenticator(self) -> Authenticator:
        return self.components.authenticator

    @property
    def sinks(self) -> list[Sink]:
        return self.components.sinks

    @property
    def tasks(self) -> dict[str, TaskSpec]:
        return self.components.tasks

    @property
    def default_task(self) -> str:
        return self.components.default_task

    @property
    def redis(self) -> Redis | None:
        """The shared client on ``redis.url``, once something has opened it."""
        return self.connections.redis

    @property
    def limiter_redis(self) -> Redis | None:
        """The client on ``limits.redis_url``, once something has opened it."""
        return self.connections.limiter_redis

    @property
    def limiter_shards(self) -> Shards:
        """Where limiter keys live: in the queue's shards, unless on ``limits.redis_url``."""
        return limiter_shards(self.settings, self.shards)

    def per_shard_rules(self, rules: Sequence[Rule]) -> list[str]:
        """Rules counted once per shard: those keyed by anything but the user."""
        return per_shard_rules(self.settings, self.shards, rules)

    @property
    def embedded(self) -> bool:
        return is_embedded(self.settings.redis.url)

    def resolved(self) -> dict[str, Any]:
        """The effective config, defaults filled in and secrets masked, for ``taskhub check``."""
        return resolved(self.settings, self.raw, self.components)

    def connection_settings(self) -> dict[str, Any]:
        """How each Redis is reached (address, db, TLS, user, timeouts), secrets masked."""
        return connections(self.settings, self.components.endpoints)

    async def check_redis(self) -> None:
        """Ask every Redis the config names what it is (eviction policy, shards per master),
        log what it found and what to warn of, and raise ConfigError for what it refuses."""
        findings = await check_redis(
            self.settings, self.raw, self.components.endpoints, self.shards
        )
        findings.log()
        findings.raise_if_refused(self.raw.source)

    def check_role(self, role: Role) -> None:
        if self.embedded and role is not Role.BOTH:
            raise UsageError(
                f"{self.raw.source}: redis.url is memory://, which keeps everything inside one "
                "process: use `taskhub run`, or point redis.url at a Redis server "
                "(for example redis://127.0.0.1:6379)"
            )

    # ----------------------------------------------------------------- factories

    def connect_redis(self, *, blocking_timeout: float = 0.0) -> Redis:
        """A new client on the configured Redis (components that block get their own)."""
        return self.connections.connect(blocking_timeout=blocking_timeout)

    def build_execution_gate(self) -> ExecutionGate | None:
        """What a worker asks before each attempt; None without execution rules."""
        if not self.execution_rules:
            return None
        connections = self.connections
        return ExecutionGate(
            connections.limiter() or connections.shared(),
            self.execution_rules,
            self.settings.redis.key_prefix,
            self.settings.limits.fail_mode,
            self.limiter_shards,
        )

    def build_limits_admin(self, deny_cache: DenyCache | None = None) -> LimitsAdmin:
        """Show and reset rule state, on the Redis the rules keep it on."""
        connections = self.connections
        return LimitsAdmin(
            connections.limiter() or connections.shared(),
            self.rules,
            self.execution_rules,
            self.settings.redis.key_prefix,
            deny_cache=deny_cache,
            shards=self.limiter_shards,
        )

    def build_admission(self) -> Admission:
        """The request path's decision and enqueue, on its pipelined connection."""
        connections = self.connections
        limits = self.settings.limits
        cache = limits.deny_cache
        return Admission(
            connections.shared(),
            self.rules,
            self.queue,
            self.settings.redis.key_prefix,
            limiter_redis=connections.limiter(),
            fail_mode=limits.fail_mode,
            deny_cache=DenyCache(cache.max_keys) if cache.enabled else None,
            pipeline=connections.admission(),
            shards=self.limiter_shards,
        )
