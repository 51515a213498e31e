"""``sanic``: taskhub's HTTP API served by Sanic, the default server.

An adapter and nothing more: every request, whatever its path, goes to the API
(:mod:`taskhub.web`) as an :class:`~taskhub.HttpRequest`, and its
:class:`~taskhub.HttpResponse` goes back as it is. The API decides every status
code, body and header. What Sanic refuses before a handler runs (a body over
``body_limit``, a request that is not HTTP, one too slow) is answered by the API's
``error``, so those answers are the API's too.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import time
from collections.abc import Callable
from types import SimpleNamespace

from sanic import Request, Sanic
from sanic.application.state import ApplicationServerInfo
from sanic.config import Config as SanicConfig
from sanic.exceptions import PayloadTooLarge, RequestCancelled, SanicException
from sanic.handlers import ErrorHandler
from sanic.http import Http, Stage
from sanic.http.constants import HTTP
from sanic.response import HTTPResponse
from sanic.server import AsyncioServer, HttpProtocol

from taskhub import (
    Headers,
    HttpHandler,
    HttpRequest,
    HttpResponse,
    HttpServerOptions,
    Options,
    PluginContext,
    Server,
    bind_tcp,
    hookimpl,
    http_url,
)
from taskhub.builtin.sanic.response import FastHeadersResponse

logger = logging.getLogger(__name__)

_app_numbers = itertools.count(1)
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]


class TrimmedHeaders:
    """Sanic's headers with each value's trailing blanks dropped. A field value has no
    surrounding whitespace (RFC 9110, 5.5); Sanic strips only the leading ones, so
    ``Idempotency-Key: k1 `` would name another job than under the other servers."""

    __slots__ = ("_headers",)

    def __init__(self, headers: Headers) -> None:
        self._headers = headers

    def get(self, name: str, /) -> str | None:
        value = self._headers.get(name)
        return None if value is None else value.rstrip(" \t")


def http_request(request: Request) -> HttpRequest:
    return HttpRequest(
        request.method,
        request.path,
        TrimmedHeaders(request.headers),
        request.body,
        request.query_string,
        request.ip,
    )


def sanic_response(response: HttpResponse) -> HTTPResponse:
    return FastHeadersResponse(
        response.body,
        status=response.status,
        headers=response.headers,
        content_type=response.content_type,
    )


# What Sanic says when a request's head, not its body, is over its size limit: a 413
# there, a 431 here.
HEAD_TOO_LARGE = "Request header exceeds the size limit"


class ApiRequest(Request):
    """Refuses a body declared over ``body_limit`` before asking the client for it: Sanic
    would send ``100 Continue`` first, then the 413."""

    async def receive_body(self) -> None:
        http = self.stream
        if isinstance(http, Http) and http.expecting_continue:
            declared, limit = http.request_bytes, http.request_max_size
            if declared is not None and limit is not None and declared > limit:
                http.expecting_continue = False  # no 100 before the answer
                http.keep_alive = False
                raise PayloadTooLarge("Request body exceeds the size limit")
        await super().receive_body()


class ApiProtocol(HttpProtocol):
    """Times a request's head from its first byte: Sanic restarts ``request_timeout`` at
    every byte received, so a client sending its headers a byte at a time held the
    connection for ever."""

    def data_received(self, data: bytes) -> None:
        first = self._time
        super().data_received(data)
        http = getattr(self, "_http", None)  # made by the connection's task, once it runs
        if http is not None and http.stage is Stage.REQUEST:
            self._time = first


class ApiErrorHandler(ErrorHandler):
    """What Sanic refuses on its own (413, 400, 408, ...) and the client hanging up,
    answered by the API."""

    def __init__(self, api: HttpHandler) -> None:
        super().__init__()
        self.api = api

    def response(self, request: Request, exception: BaseException) -> HTTPResponse:
        known = request if getattr(request, "headers", None) is not None else None
        if isinstance(exception, RequestCancelled):  # the client hung up: nobody to answer
            logger.info("client hung up before the answer to %s %s", request.method, request.path)
            status = 499
        elif isinstance(exception, PayloadTooLarge) and str(exception) == HEAD_TOO_LARGE:
            status = 431
        elif isinstance(exception, SanicException):
            status = exception.status_code
        else:
            logger.error("unhandled error in Sanic on %s", request.path, exc_info=exception)
            status = 500
        return sanic_response(self.api.error(status, http_request(known) if known else None))


class SanicServer(Server):
    name = "sanic"

    class Config(HttpServerOptions):
        """Every option an HTTP server shares (:class:`taskhub.HttpServerOptions`)."""

    config: Config

    def __init__(self, config: Options) -> None:
        super().__init__(config)
        self._server: AsyncioServer | None = None
        self._address = ""

    @property
    def address(self) -> str:
        return self._address

    def build_app(self, api: HttpHandler) -> Sanic[SanicConfig, SimpleNamespace]:
        c = self.config
        sanic_config = SanicConfig()
        sanic_config.update(  # Sanic takes fractions of a second, though typed int
            REQUEST_MAX_SIZE=c.body_limit,
            KEEP_ALIVE_TIMEOUT=c.keep_alive_timeout,
            REQUEST_TIMEOUT=c.request_timeout,
            ACCESS_LOG=False,
            FALLBACK_ERROR_FORMAT="json",
        )
        number = next(_app_numbers)
        app = Sanic(
            "taskhub" if number == 1 else f"taskhub_{number}",
            config=sanic_config,
            error_handler=ApiErrorHandler(api),
            request_class=ApiRequest,
            configure_logging=False,
        )
        # Tell Sanic's start-up code rewriter that only HTTP/1.1 is served, so it drops
        # the empty alt-svc header it otherwise adds to every response.
        app.state.server_info.append(ApplicationServerInfo(settings={"version": HTTP.VERSION_1}))
        handle = api.handle

        async def every_path(request: Request, path: str = "") -> HTTPResponse:
            return sanic_response(await handle(http_request(request)))

        app.add_route(every_path, "/", methods=METHODS, name="root")
        app.add_route(every_path, "/<path:path>", methods=METHODS, name="api")
        return app

    def bind(self) -> socket.socket:
        """Bind the listening socket ourselves: Sanic reads port 0 as "use 8000"."""
        return bind_tcp(self.config.host, self.config.port)

    async def start(self, context: PluginContext) -> None:
        c = self.config
        app = self.build_app(context.http)
        sock = self.listen_socket or self.bind()
        server = await app.create_server(
            sock=sock, backlog=c.backlog, access_log=False, protocol=ApiProtocol
        )
        assert server is not None, (
            "create_server returns None only with return_asyncio_server=False"
        )
        await server.startup()
        await server.before_start()
        await server.start_serving()
        await server.after_start()
        self._server = server
        self._address = http_url(sock)

    async def stop(self) -> None:
        server = self._server
        if server is None:
            return
        self._server = None
        await server.before_stop()
        server.close()
        await server.wait_closed()
        deadline = time.monotonic() + self.config.graceful_shutdown
        while server.connections and time.monotonic() < deadline:
            for connection in list(server.connections):
                # Sanic calls a keep-alive connection idle until its task has parsed the
                # request it already read; closing it then runs the request and loses the
                # answer (a job stored, the client told nothing), so wait for that request.
                if not connection.recv_buffer:
                    connection.close_if_idle()
            await asyncio.sleep(0.02)
        for connection in list(server.connections):
            connection.abort()
        await server.after_stop()


@hookimpl
def register_servers(register: Callable[[type[Server]], None]) -> None:
    register(SanicServer)
