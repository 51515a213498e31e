"""Run a policy's rules on the limiter's own Redis, and decide what happens when it is down.

Used when the limiter keeps its state apart from the queue (``limits.redis_url``)
and by execution limits on workers. Fail modes, for when that Redis is unreachable:

- ``closed``: raise BackendUnavailable (the server answers 503, the worker waits);
- ``open``: decide nothing and let everything through (logged once per outage);
- ``local``: decide on an in-process Redis (embedded fakeredis running the very
  same Lua) until the real one returns, like rate-limiter-flexible's insurance
  limiter. Each process then limits on its own.

After a failure, requests skip the unreachable Redis for ``PROBE_INTERVAL``
seconds and one request at a time probes it, so an outage costs no timeouts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any, Literal, cast

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError

from taskhub.errors import BackendUnavailable
from taskhub.store.outage import OutageLog
from taskhub.store.pipeline import ScriptCall

logger = logging.getLogger(__name__)

FailMode = Literal["closed", "open", "local"]
PROBE_INTERVAL = 1.0


def local_redis() -> Redis:
    """A private embedded Redis with Lua, for the ``local`` fail mode."""
    from fakeredis import FakeAsyncRedis, FakeServer  # noqa: PLC0415

    return FakeAsyncRedis(server=FakeServer())


class FailModeScript:
    """One Lua script on the limiter's Redis, with a fail mode for when it is unreachable."""

    def __init__(self, redis: Redis, source: str, fail_mode: FailMode, what: str) -> None:
        self.fail_mode = fail_mode
        self._redis = redis
        self._cluster = isinstance(cast(object, redis), RedisCluster)  # no script pipelines
        self._source = source
        self._script = redis.register_script(source)
        self._local = local_redis().register_script(source) if fail_mode == "local" else None
        self._outage = OutageLog(f"Redis ({what}, fail_mode {fail_mode})", logger)
        self._skip_until = 0.0

    @property
    def degraded(self) -> bool:
        return self._outage.down_since is not None

    async def __call__(
        self, keys: Sequence[Any], args: Sequence[Any]
    ) -> tuple[list[Any] | None, bool]:
        """The script's reply and whether the fail mode gave it (Redis unreachable).

        The reply is None in ``open`` mode during an outage: nothing was decided.
        """
        now = time.monotonic()
        if now < self._skip_until:
            return await self._fallback(keys, args), True
        if self.degraded:  # this request probes; the others keep to the fallback meanwhile
            self._skip_until = now + PROBE_INTERVAL
        try:
            reply = await self._script(keys=keys, args=args)
        except Exception as exc:
            self._outage.absorb(exc)
            self._skip_until = time.monotonic() + PROBE_INTERVAL
            return await self._fallback(keys, args), True
        self._outage.succeeded()
        self._skip_until = 0.0
        return reply, False

    async def many(self, calls: Sequence[ScriptCall]) -> tuple[list[list[Any] | None], bool]:
        """Each call's reply, in order, in one round trip (a pipeline), and whether the fail
        mode gave them: the batch probes or skips an unreachable Redis as one call does.
        On a Redis Cluster client the calls go one by one (each as ``__call__``)."""
        if self._cluster:
            replies, degraded = [], False
            for keys, args in calls:
                reply, fell_back = await self(keys, args)
                replies.append(reply)
                degraded = degraded or fell_back
            return replies, degraded
        now = time.monotonic()
        if now < self._skip_until:
            return [await self._fallback(k, a) for k, a in calls], True
        if self.degraded:
            self._skip_until = now + PROBE_INTERVAL
        try:
            replies = await self._pipelined(calls)
        except Exception as exc:
            self._outage.absorb(exc)
            self._skip_until = time.monotonic() + PROBE_INTERVAL
            return [await self._fallback(k, a) for k, a in calls], True
        self._outage.succeeded()
        self._skip_until = 0.0
        return replies, False

    async def _pipelined(self, calls: Sequence[ScriptCall]) -> list[Any]:
        """EVALSHA for every call in one pipeline; those Redis had no script for (it was
        flushed: they did not run) run again, in order, once it is loaded."""
        replies = await self._evalsha(calls)
        lost = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if lost:
            await self._redis.script_load(self._source)
            again = await self._evalsha([calls[i] for i in lost])
            for index, reply in zip(lost, again, strict=True):
                replies[index] = reply
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    async def _evalsha(self, calls: Sequence[ScriptCall]) -> list[Any]:
        pipe = self._redis.pipeline(transaction=False)
        sha = self._script.sha
        for keys, args in calls:
            pipe.execute_command("EVALSHA", sha, len(keys), *keys, *args)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        return replies

    async def _fallback(self, keys: Sequence[Any], args: Sequence[Any]) -> list[Any] | None:
        if self.fail_mode == "open":
            return None
        if self._local is not None:
            reply: list[Any] = await self._local(keys=keys, args=args)
            return reply
        raise BackendUnavailable("the limiter's Redis is unreachable")
