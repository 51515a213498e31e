"""The Redis clients one process opens: each made when first needed, all closed together,
all from the connection settings read once when the config loaded."""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from taskhub.config.models import RedisSettings, Settings
from taskhub.config.paths import Loc
from taskhub.config.raw import RawConfig
from taskhub.errors import ConfigError, Problem
from taskhub.store.clients import connect
from taskhub.store.cluster_router import ClusterPipeline, admission_pipeline
from taskhub.store.connection import ConnectionSettings, InvalidConnection, connection_settings
from taskhub.store.pipeline import RedisPipeline


@dataclass(frozen=True)
class Endpoints:
    """How to reach ``redis.url`` and ``limits.redis_url``: None for ``memory://`` (and
    for no ``limits.redis_url``)."""

    redis: ConnectionSettings | None
    limiter: ConnectionSettings | None

    @classmethod
    def read(cls, settings: Settings, raw: RawConfig, problems: list[Problem]) -> Endpoints:
        """Read both URLs; each bad one adds a problem naming its key and line."""

        def read(url: str | None, loc: Loc) -> ConnectionSettings | None:
            try:
                return connection_settings(settings.redis, url)
            except InvalidConnection as exc:
                problems.append(
                    raw.problem((*loc[:-1], *exc.key) if url is None else loc, str(exc))
                )
                return None

        redis = read(None, ("redis", "url"))
        limiter_url = settings.limits.redis_url
        limiter = read(limiter_url, ("limits", "redis_url")) if limiter_url else None
        return cls(redis, limiter)

    @classmethod
    def of(cls, settings: Settings) -> Endpoints:
        """For settings made in code (tests): a bad URL raises ConfigError."""
        problems: list[Problem] = []
        endpoints = cls.read(settings, RawConfig("config", {}), problems)
        if problems:
            raise ConfigError("config", problems)
        return endpoints


class Connections:
    """The queue's Redis (``redis.url``), the limiter's own (``limits.redis_url``, if
    set) and the admission's pipelined connection."""

    def __init__(self, settings: Settings, endpoints: Endpoints | None = None) -> None:
        self.settings = settings
        self.endpoints = endpoints or Endpoints.of(settings)
        self.redis: Redis | None = None
        self.limiter_redis: Redis | None = None
        self.pipeline: RedisPipeline | ClusterPipeline | None = None

    def connect(self, *, blocking_timeout: float = 0.0) -> Redis:
        """A new client on ``redis.url``, for whoever needs one of their own (it blocks)."""
        target = self.endpoints.redis or self.settings.redis  # RedisSettings: memory://
        return connect(target, blocking_timeout=blocking_timeout)

    def shared(self) -> Redis:
        """The process's shared client on ``redis.url``."""
        if self.redis is None:
            self.redis = self.connect()
        return self.redis

    def limiter(self) -> Redis | None:
        """The client on ``limits.redis_url``; None when the limiter shares the queue's Redis."""
        url = self.settings.limits.redis_url
        if not url:
            return None
        if self.limiter_redis is None:
            # Always one Redis: on a cluster the limiter's place is beside its jobs.
            target = self.endpoints.limiter or RedisSettings(url=url)  # RedisSettings: memory://
            self.limiter_redis = connect(target)
        return self.limiter_redis

    def admission(self) -> RedisPipeline | ClusterPipeline | None:
        """The admission script's fast path (None on the embedded store)."""
        if self.pipeline is None:
            self.pipeline = admission_pipeline(self.endpoints.redis)
        return self.pipeline

    def scripts(self) -> RedisPipeline | ClusterPipeline | None:
        """A pipelined connection of its own for a component's Lua scripts (None on the
        embedded store); whoever asks closes it."""
        return admission_pipeline(self.endpoints.redis)

    async def aclose(self) -> None:
        for client in (self.redis, self.limiter_redis):
            if client is not None:
                await client.aclose()
        if self.pipeline is not None:
            await self.pipeline.close()
        self.redis = self.limiter_redis = self.pipeline = None
