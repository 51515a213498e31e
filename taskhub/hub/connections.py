"""The Redis clients one process opens: each made when first needed, all closed together."""

from __future__ import annotations

from redis.asyncio import Redis

from taskhub.config.models import Settings
from taskhub.store.clients import connect
from taskhub.store.cluster_router import ClusterPipeline, admission_pipeline
from taskhub.store.pipeline import RedisPipeline


class Connections:
    """The queue's Redis (``redis.url``), the limiter's own (``limits.redis_url``, if
    set) and the admission's pipelined connection."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.redis: Redis | None = None
        self.limiter_redis: Redis | None = None
        self.pipeline: RedisPipeline | ClusterPipeline | None = None

    def connect(self, *, blocking_timeout: float = 0.0) -> Redis:
        """A new client on ``redis.url``, for whoever needs one of their own (it blocks)."""
        return connect(self.settings.redis, blocking_timeout=blocking_timeout)

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
            single = {"url": url, "cluster": False, "nodes": []}
            self.limiter_redis = connect(self.settings.redis.model_copy(update=single))
        return self.limiter_redis

    def admission(self) -> RedisPipeline | ClusterPipeline | None:
        """The admission script's fast path (None on the embedded store)."""
        if self.pipeline is None:
            self.pipeline = admission_pipeline(self.settings.redis)
        return self.pipeline

    async def aclose(self) -> None:
        for client in (self.redis, self.limiter_redis):
            if client is not None:
                await client.aclose()
        if self.pipeline is not None:
            await self.pipeline.close()
        self.redis = self.limiter_redis = self.pipeline = None
