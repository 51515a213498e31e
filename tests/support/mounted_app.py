"""A Starlette application that mounts taskhub under ``/jobs`` (tests/test_asgi_mount.py):
``uvicorn tests.support.mounted_app:app`` with ``TASKHUB_CONFIG`` set."""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from taskhub.asgi import create_app


async def index(request: Request) -> PlainTextResponse:
    return PlainTextResponse("the host application")


app = Starlette(
    routes=[
        Route("/", index),
        Mount("/jobs", app=create_app(os.environ["TASKHUB_CONFIG"])),
    ]
)
