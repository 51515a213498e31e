"""The refused row's baseline: a bare Sanic endpoint that answers every POST /task
with a 429 JSON body, in one process, with taskhub's Sanic settings (no access log).

    python -m bench.bare_429 PORT
"""

from __future__ import annotations

import sys

from sanic import Request, Sanic
from sanic.response import HTTPResponse, json

app = Sanic("bare_429")
app.config.ACCESS_LOG = False


@app.post("/task")
async def task(request: Request) -> HTTPResponse:
    return json(
        {"error": "rate_limited", "message": "too many requests", "retry_after": 1},
        status=429,
        headers={"Retry-After": "1"},
    )


@app.get("/health")
async def health(request: Request) -> HTTPResponse:
    return json({"status": "ok"})


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(sys.argv[1]), single_process=True, access_log=False)
