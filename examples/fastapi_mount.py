"""taskhub's HTTP API under ``/jobs`` of a FastAPI application.

    TASKHUB_CONFIG=config.yaml uvicorn examples.fastapi_mount:app

Starlette, under FastAPI, runs no lifespan for an application it mounts: taskhub
starts on the first request under ``/jobs``, and stops when the server does.
``tests/test_asgi_mount.py`` runs this file.
"""

import os

from fastapi import FastAPI

from taskhub.asgi import create_app

app = FastAPI(title="shop")
app.mount("/jobs", create_app(os.environ.get("TASKHUB_CONFIG", "config.yaml")))


@app.get("/")
async def index() -> dict[str, str]:
    return {"service": "shop", "jobs": "/jobs/docs"}
