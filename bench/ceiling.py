"""The HTTP ceiling of a server: the answer taskhub gives a refused request (its 429
body, its six rate-limit headers and a request id, the same bytes), constant, with no
taskhub work behind it. ``GET /health`` answers 200, for the harness's readiness check.

    python -m bench.ceiling SERVER PORT    # taskhub's server plugin SERVER, stub API
    uvicorn bench.ceiling:app ...          # a bare ASGI app, for the ASGI servers

For taskhub's own server plugins, the plugin itself runs: its class as registered,
built from its config and started with a context that holds only a stub
``HttpHandler`` answering that response, so the ceiling is the plugin's own cost.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from taskhub.http import JSON, HttpRequest, HttpResponse

# What taskhub answered to the refused row's load (one user over its 20 per minute).
REFUSAL_BODY = (
    b'{"error":"rate_limited","message":"rate limit \'token_bucket\' reached; retry in 3 s",'
    b'"policy":"token_bucket","refused_by":["token_bucket"],"retry_after":3}'
)
REFUSAL_HEADERS = {
    "X-RateLimit-Limit": "20",
    "X-RateLimit-Remaining": "0",
    "X-RateLimit-Reset": "1796669553",
    "RateLimit-Policy": '"token_bucket";q=20;w=60',
    "RateLimit": '"token_bucket";r=0;t=60',
    "Retry-After": "3",
    "X-Request-ID": "ad6ce259a6ec9a49",
}
HEALTH_BODY = b'{"status":"ok"}'
ERROR_BODY = b'{"error":"bad_request"}'


class ConstantApi:
    """An ``HttpHandler`` that decides nothing: the refusal to every request, a new
    response each time (as taskhub makes one), and 200 to ``GET /health``."""

    async def handle(self, request: HttpRequest) -> HttpResponse:
        if request.path == "/health":
            return HttpResponse(200, HEALTH_BODY)
        return HttpResponse(429, REFUSAL_BODY, dict(REFUSAL_HEADERS))

    def error(self, status: int, request: HttpRequest | None = None) -> HttpResponse:
        return HttpResponse(status, ERROR_BODY)


class StubContext:
    """The plugin context of a server process with nothing but ``http``."""

    def __init__(self) -> None:
        from taskhub.context import Role  # noqa: PLC0415 (the ASGI app needs none of it)

        self.role = Role.SERVER
        self.http = ConstantApi()

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(f"the ceiling's context has no {name!r}: only http")


async def serve(server_name: str, port: int) -> None:
    """Start the registered server plugin ``server_name`` on 127.0.0.1:``port`` with the
    stub API, until SIGTERM or SIGINT."""
    from taskhub.hub.plugins import load_plugins  # noqa: PLC0415

    cls = load_plugins().get("server", server_name)
    server = cls(cls.Config.model_validate({"host": "127.0.0.1", "port": port}))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await server.start(StubContext())
    print(f"{server_name} ceiling on http://127.0.0.1:{port}", flush=True)
    await stop.wait()
    await server.stop()


# --------------------------------------------------------------------- bare ASGI

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGI_HEALTH = [(b"content-type", JSON.encode()), (b"content-length", b"%d" % len(HEALTH_BODY))]
ASGI_REFUSAL = [
    (b"content-type", JSON.encode()),
    (b"content-length", b"%d" % len(REFUSAL_BODY)),
    *((name.lower().encode(), value.encode()) for name, value in REFUSAL_HEADERS.items()),
]


async def app(
    scope: Scope,
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
) -> None:
    """The same answers as a bare ASGI 3 application: it reads each request's body, as
    taskhub's ASGI app must, and sends the constant response."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    if scope["path"] == "/health":
        status, headers, body = 200, ASGI_HEALTH, HEALTH_BODY
    else:
        status, headers, body = 429, ASGI_REFUSAL, REFUSAL_BODY
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not argv[1].isdigit():
        print("usage: python -m bench.ceiling SERVER PORT", file=sys.stderr)
        return 2
    try:
        import uvloop  # noqa: PLC0415

        factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:  # as taskhub serve runs
        runner.run(serve(argv[0], int(argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
