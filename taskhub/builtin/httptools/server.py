"""``httptools``: taskhub's HTTP API served by an asyncio protocol on llhttp, for speed.

An adapter and nothing more, like ``sanic``: every request goes to the API
(:mod:`taskhub.web`) and its answer goes back as it is, with only the framing added
(:mod:`.wire`), the same bytes as Sanic's. It takes about half Sanic's CPU per request
(docs: performance.md, "Choosing a server"): no routing, middleware, signals or request
objects of its own, one task per connection rather than per request, and timeouts read
from a clock the server ticks instead of a timer per request (see :mod:`.protocol`).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable

from pydantic import Field

from taskhub import (
    HttpServerOptions,
    Options,
    PluginContext,
    Server,
    bind_tcp,
    hookimpl,
    http_url,
)
from taskhub.builtin.httptools.protocol import HttpConnection, Limits, Shared


class HttptoolsServer(Server):
    name = "httptools"

    class Config(HttpServerOptions):
        """Every option an HTTP server shares (:class:`taskhub.HttpServerOptions`), and the
        size of a request's head, which Sanic fixes at 8 KiB."""

        header_limit: int = Field(
            8_192,
            ge=1_024,
            le=1_048_576,
            description="largest request line and headers in bytes; a larger head gets 431",
        )

    config: Config

    def __init__(self, config: Options) -> None:
        super().__init__(config)
        self._server: asyncio.AbstractServer | None = None
        self._shared: Shared | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._address = ""

    @property
    def address(self) -> str:
        return self._address

    def bind(self) -> socket.socket:
        return bind_tcp(self.config.host, self.config.port)

    async def start(self, context: PluginContext) -> None:
        c = self.config
        loop = asyncio.get_running_loop()
        limits = Limits(c.body_limit, c.header_limit, c.request_timeout, c.keep_alive_timeout)
        shared = self._shared = Shared(context.http, limits, loop.time())
        sock = self.listen_socket or self.bind()
        self._server = await loop.create_server(
            lambda: HttpConnection(shared), sock=sock, backlog=c.backlog
        )
        self._sweeper = asyncio.create_task(sweep(shared, tick(limits)), name="http-timeouts")
        self._address = http_url(sock)

    async def stop(self) -> None:
        server, shared = self._server, self._shared
        if server is None or shared is None:
            return
        self._server = None
        server.close()  # no new connections
        shared.draining = True
        for connection in list(shared.connections):
            connection.drain()
        if shared.connections:
            shared.drained.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(shared.drained.wait(), self.config.graceful_shutdown)
        for connection in list(shared.connections):
            if connection.transport is not None:
                connection.transport.abort()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper


def tick(limits: Limits) -> float:
    """How often the clock ticks: a quarter of the request timeout, at most 0.25 s."""
    return max(0.01, min(0.25, limits.request_timeout / 4))


async def sweep(shared: Shared, interval: float) -> None:
    """Tick the connections' clock; close those past their deadline. A deadline was set
    from a clock up to one tick old, so one tick is added before it counts as past: a
    timeout is never cut short, and ends at most two ticks late."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(interval)
        shared.now = now = loop.time()
        past = now - interval
        expired = [c for c in shared.connections if c.deadline < past and not c.busy]
        for connection in expired:
            connection.expire()


@hookimpl
def register_servers(register: Callable[[type[Server]], None]) -> None:
    register(HttptoolsServer)
