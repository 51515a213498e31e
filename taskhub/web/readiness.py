"""Readiness (``GET /ready``): can this process admit a task right now?

Liveness (``/health``) only says the process serves; a load balancer needs to
know whether it would answer 503 instead, so it can route around it while Redis
is down. Each check is one cheap round trip with a short timeout, so a probe
never hangs on a dead server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, cast

from redis.asyncio import Redis

from taskhub.errors import BackendUnavailable
from taskhub.store.clients import redis_call
from taskhub.store.cluster_router import ClusterPipeline
from taskhub.store.pipeline import RedisPipeline

OK = "ok"
Check = Callable[[], Awaitable[Any]]


def pinger(client: Redis | RedisPipeline | ClusterPipeline) -> Check:
    """A check that PINGs ``client``: for admission, the pipelined connection (every
    master's, on a cluster) that admissions go out on, so that /ready cannot say ready
    while they fail (the pipeline once failed TLS where redis-py connected)."""
    return lambda: redis_call(cast(Awaitable[Any], client.ping()))


async def readiness(checks: Mapping[str, Check], timeout: float) -> dict[str, str]:
    """Each check's outcome: ``"ok"``, ``"unavailable"`` or ``"timeout"``; all run at once."""
    outcomes = await asyncio.gather(*(_run(check, timeout) for check in checks.values()))
    return dict(zip(checks, outcomes, strict=True))


async def _run(check: Check, timeout: float) -> str:
    try:
        async with asyncio.timeout(timeout):
            await check()
    except BackendUnavailable:
        return "unavailable"
    except TimeoutError:
        return "timeout"
    return OK
