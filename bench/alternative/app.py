"""The stack a Python user would assemble instead of taskhub: Starlette, the ``limits``
library (async Redis storage, a fixed window of 20 per minute per user, as
rate-limiter-flexible and the seed) and arq's enqueue. Two or more round trips per
request (the limiter's, then arq's enqueue), no atomicity between them.

    REDIS_URL=redis://127.0.0.1:6379/0 uvicorn bench.alternative.app:app --workers 1
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from limits import parse
from limits.aio.storage import RedisStorage
from limits.aio.strategies import FixedWindowRateLimiter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
LIMIT = parse("20/minute")

storage = RedisStorage(f"async+{REDIS_URL}", implementation="redispy")
limiter = FixedWindowRateLimiter(storage)
state: dict[str, ArqRedis] = {}


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    state["arq"] = await create_pool(RedisSettings.from_dsn(REDIS_URL))
    yield
    await state["arq"].aclose()


async def submit(request: Request) -> JSONResponse:
    try:
        body: Any = await request.json()
    except ValueError:
        return JSONResponse({"error": "invalid_json"}, status_code=400)
    user_id = body.get("user_id") if isinstance(body, dict) else None
    if not isinstance(user_id, str) or not user_id:
        return JSONResponse({"error": "invalid_request"}, status_code=422)
    if not await limiter.hit(LIMIT, "task", user_id):
        return JSONResponse({"error": "rate_limited"}, status_code=429)
    job = await state["arq"].enqueue_job("log_completion", user_id)
    if job is None:
        return JSONResponse({"error": "duplicate"}, status_code=409)
    return JSONResponse({"status": "queued", "job_id": job.job_id})


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


app = Starlette(
    routes=[Route("/task", submit, methods=["POST"]), Route("/health", health)],
    lifespan=lifespan,
)
