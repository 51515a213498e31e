"""Readiness (``GET /ready``): can this process admit a task right now?

Liveness (``/health``) only says the process serves; a load balancer needs to
know whether it would answer 503 instead, so it can route around it while Redis
is down. Each check is one cheap round trip with a short timeout, so a probe
never hangs on a dead server.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from taskhub.errors import BackendUnavailable
from taskhub.store.clients import guarded

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from taskhub.hub.kernel import Hub

logger = logging.getLogger(__name__)

OK = "ok"


async def readiness(hub: Hub, timeout: float) -> dict[str, str]:
    """Each check's outcome: ``"ok"``, ``"unavailable"`` or ``"timeout"``; all run at once."""
    checks: dict[str, Callable[[], Awaitable[Any]]] = {}
    if hub.redis is not None:
        checks["redis"] = _pinger(hub.redis)
    if hub.limiter_redis is not None:
        checks["limiter_redis"] = _pinger(hub.limiter_redis)
    checks["queue"] = hub.queue.check
    outcomes = await asyncio.gather(*(_run(check, timeout) for check in checks.values()))
    return dict(zip(checks, outcomes, strict=True))


def _pinger(client: Redis) -> Callable[[], Awaitable[Any]]:
    return lambda: guarded(client.ping())


async def _run(check: Callable[[], Awaitable[Any]], timeout: float) -> str:
    try:
        async with asyncio.timeout(timeout):
            await check()
    except BackendUnavailable:
        return "unavailable"
    except TimeoutError:
        return "timeout"
    return OK
