"""taskhub's HTTP API as an ASGI 3 application, for uvicorn, hypercorn or granian, or
mounted inside a Starlette or FastAPI application.

An adapter, as the server plugins are (:mod:`taskhub.http`): each request goes to the
API as an :class:`~taskhub.HttpRequest` and its :class:`~taskhub.HttpResponse` goes
back as it is, so every status, body and API header is the one ``taskhub run``
answers. The body is read up to ``server.body_limit``; a larger one gets the API's
413 without the rest being read.

The hub runs in this process (a :class:`~taskhub.hub.runtime.Runtime` whose own
server component stays idle), in one task that starts it, waits, and closes it
(the worker finishes or hands back its jobs, sinks flush, connections close):

- with a lifespan (``uvicorn taskhub.asgi:app``), ``lifespan.startup`` starts it and
  ``lifespan.shutdown`` closes it; a host application may run it within its own
  lifespan instead (:meth:`TaskhubApp.lifespan`);
- without one (Starlette's ``Mount`` runs no lifespan for the application it mounts),
  the first request starts it, and concurrent first requests wait for that one start.
  Nothing tells such an application that the server stops, so it listens for the
  signal that stops the server: the first SIGTERM or SIGINT closes taskhub, then
  goes on to the handler that was there before (the server's). uvicorn handles its
  signals that way, so it starts shutting down only once taskhub has stopped. A
  server that takes signals through its event loop (hypercorn, granian) shuts down
  meanwhile; if its loop ends first, it cancels every task, and the cancelled close
  goes on regardless: the worker hands its jobs back at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from types import FrameType
from typing import Any
from urllib.parse import quote

from taskhub.components import HttpServerOptions
from taskhub.config.secrets import secret_values
from taskhub.context import HttpHandler, Role
from taskhub.errors import StartupError, TaskhubError, UsageError
from taskhub.http import HttpRequest, HttpResponse
from taskhub.hub.kernel import Hub
from taskhub.hub.plugins import describe_error
from taskhub.hub.runtime import Runtime
from taskhub.monitoring import log_format
from taskhub.web.app import HttpApi
from taskhub.web.routing import Router

__all__ = ["CONFIG_ENV", "ROLE_ENV", "TaskhubApp", "app", "create_app"]

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

CONFIG_ENV = "TASKHUB_CONFIG"  # the config of the module-level ``app``
ROLE_ENV = "TASKHUB_ROLE"  # and its role: run (the default) or serve
ROLES = {"run": Role.BOTH, "serve": Role.SERVER}
CLIENT_GONE = 499  # the API's answer to a request whose client hung up (a long wait)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
SignalHandler = Callable[[int, FrameType | None], Any] | int | None
# Libraries that log every job at INFO: quiet, as the CLI keeps them.
CHATTY_LOGGERS = ("saq",)
# Characters a path keeps as they are when percent-encoded (RFC 3986 pchar and "/").
PATH_SAFE = "/!$&'()*+,;=:@"
# Every secret of every config loaded in this process: one log handler masks them all.
_secrets: set[str] = set()


@dataclass(frozen=True)
class Hosted:
    """A loaded config, in the role it runs in here, and the largest body it reads."""

    hub: Hub
    role: Role
    body_limit: int


class ClientGone(Exception):
    """The client closed the connection before its body arrived: nobody to answer."""


def role_named(role: str) -> Role:
    """The role an application runs in, by the name the CLI's command gives it."""
    try:
        return ROLES[role]
    except KeyError:
        raise UsageError(
            f"role {role!r}: an ASGI application serves HTTP, so its role is 'run' "
            "(the server and a worker, as `taskhub run`) or 'serve' (the server alone, "
            "as `taskhub serve`, with `taskhub worker` processes beside it)"
        ) from None


def load(config_path: str | os.PathLike[str], role: Role) -> Hosted:
    """The config's hub, checked for ``role``, with taskhub's logging set up for it."""
    hub = Hub.from_file(config_path)
    hub.check_role(role)
    configure_logging(hub)
    server = hub.server.config
    options = server if isinstance(server, HttpServerOptions) else HttpServerOptions()
    return Hosted(hub, role, options.body_limit)


def configure_logging(hub: Hub) -> None:
    """taskhub's log lines, secrets masked, unless the host already set up logging:
    only the ``taskhub`` logger's level is taken from the config, never the root's."""
    logs = hub.settings.logging
    _secrets.update(secret_values(hub.raw))
    log_format.install(logs.format, _secrets)
    logging.getLogger("taskhub").setLevel(logs.level)
    for name in CHATTY_LOGGERS:
        chatty = logging.getLogger(name)
        if chatty.level == logging.NOTSET:
            chatty.setLevel(logging.WARNING)


def create_app(config_path: str | os.PathLike[str], role: str = "run") -> TaskhubApp:
    """The ASGI application serving the API of the config at ``config_path``.

    ``role`` is ``"run"`` (the server and a worker, as ``taskhub run``) or ``"serve"``
    (the server alone). The config is loaded now: a bad one raises
    :class:`~taskhub.ConfigError` naming each problem's YAML path, a bad role
    :class:`~taskhub.UsageError`. Nothing connects until the application starts.
    """
    hosted = load(config_path, role_named(role))
    return TaskhubApp(lambda: hosted)


def from_environment() -> Hosted:
    """The module-level ``app``'s config: ``TASKHUB_CONFIG``, in ``TASKHUB_ROLE``."""
    path = os.environ.get(CONFIG_ENV)
    if not path:
        raise UsageError(
            f"{CONFIG_ENV} is not set: taskhub.asgi:app serves the config it names, so set "
            f"it to the config file's path (for example {CONFIG_ENV}=config.yaml "
            "uvicorn taskhub.asgi:app), or call taskhub.asgi.create_app(path)"
        )
    return load(path, role_named(os.environ.get(ROLE_ENV) or "run"))


class TaskhubApp:
    """An ASGI 3 application: taskhub's HTTP API, and the hub that serves it.

    One application runs on one event loop; another config is another application.
    """

    def __init__(self, loader: Callable[[], Hosted]) -> None:
        self._loader = loader
        self._hosted: Hosted | None = None
        self._api: HttpHandler | None = None  # set while the runtime serves
        self._last_api: HttpHandler | None = None  # answers errors once it no longer does
        self._runtime: Runtime | None = None
        self._started: asyncio.Future[HttpHandler] | None = None
        self._keeper: asyncio.Task[None] | None = None
        self._stopped = False
        self._signals: dict[int, SignalHandler] = {}  # the handlers ours stand in front of

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":  # closing before accepting is the server's 403
            await send({"type": "websocket.close", "code": 1008})
        else:
            raise UsageError(f"taskhub's ASGI application serves HTTP, not {kind!r}")

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> HttpHandler:
        """Start the hub, once: a caller during the start waits for that one; after a
        failed start the next caller tries again. Raises what made the start fail."""
        return await self._start(on_request=False)

    async def _start(self, *, on_request: bool) -> HttpHandler:
        if self._stopped:
            raise StartupError("taskhub has stopped in this process")
        if self._started is None:
            loop = asyncio.get_running_loop()
            started = self._started = loop.create_future()
            started.add_done_callback(_retrieved)
            keeper = self._keep(started, listen=on_request)
            self._keeper = loop.create_task(keeper, name="taskhub")
        return await asyncio.shield(self._started)

    async def stop(self) -> None:
        """Close the hub (the worker finishes or hands back its jobs, sinks flush,
        connections close); requests get 503 from then on."""
        self._stopped = True
        if self._runtime is not None:
            self._runtime.stopping.set()
        if self._keeper is not None:
            await asyncio.shield(self._keeper)

    @contextlib.asynccontextmanager
    async def lifespan(self, host: object = None) -> AsyncIterator[None]:
        """taskhub started and stopped with a host application's lifespan, for a mount:
        ``FastAPI(lifespan=jobs.lifespan)``. Any server then stops it as gracefully as
        ``lifespan.shutdown`` does, signals or not."""
        await self.start()
        try:
            yield
        finally:
            await self.stop()

    # What stops the server stops taskhub first, when nothing else would (no lifespan).

    def _listen_for_stop_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers belong to the main thread
        loop = asyncio.get_running_loop()
        for signum in STOP_SIGNALS:

            def handler(number: int, frame: FrameType | None) -> None:
                loop.call_soon_threadsafe(self._on_signal, number)

            self._signals[signum] = signal.getsignal(signum)
            signal.signal(signum, handler)

    def _on_signal(self, signum: int) -> None:
        if self._stopped or self._keeper is None:  # nothing to wait for, or a second signal
            self._pass_on(signum)
            return
        name = signal.Signals(signum).name
        logger.info("%s received: stopping taskhub, then the server", name)
        self._stopped = True
        if self._runtime is not None:
            self._runtime.stopping.set()
        self._keeper.add_done_callback(lambda _: self._pass_on(signum))

    def _pass_on(self, signum: int) -> None:
        """Put the handlers ours stood in front of back, and raise the signal again for
        whichever is in place (the server's; or the default, which ends the process)."""
        self._restore_signals()
        signal.raise_signal(signum)

    def _restore_signals(self) -> None:
        for signum, previous in self._signals.items():
            signal.signal(signum, signal.SIG_DFL if previous is None else previous)
        self._signals.clear()

    async def _keep(self, started: asyncio.Future[HttpHandler], *, listen: bool) -> None:
        """The runtime's whole life in one task: start, serve until stopped (or until the
        worker fails, a stop signal comes, or the loop ends and cancels this task), close.
        ``listen``: started by a request, so no lifespan will stop it: signals do."""
        try:
            if self._hosted is None:
                self._hosted = await asyncio.to_thread(self._loader)  # reads files
            hosted = self._hosted
            runtime = self._runtime = Runtime(hosted.hub, hosted.role, serve_http=False)
            await runtime.start()
        except BaseException as exc:
            self._started = self._keeper = self._runtime = None  # the next caller tries again
            if not isinstance(exc, Exception):  # cancelled, or the process is exiting
                started.cancel()
                raise
            started.set_exception(exc)
            return
        self._api = self._last_api = runtime.http
        started.set_result(runtime.http)
        if self._stopped:  # stop() came during the start
            runtime.stopping.set()
        elif listen:
            self._listen_for_stop_signals()
        try:
            await runtime.until_stopped()
        except asyncio.CancelledError:
            # The loop is ending, so asyncio cancels every task: close all the same.
            _uncancel()
            logger.info("the event loop is ending: stopping taskhub")
        finally:
            self._api = None
            self._stopped = True
        await self._close(runtime)
        self._restore_signals()

    async def _close(self, runtime: Runtime) -> None:
        try:
            await runtime.close()
        except asyncio.CancelledError:
            # Cancelled mid-way by the loop's end (every step still ran), or a component
            # awaited one of its own tasks that the loop's end cancelled.
            _uncancel()
        try:
            runtime.raise_if_worker_failed()
        except StartupError as exc:
            logger.error("%s: this process answers 503 until it restarts", exc)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        """``lifespan.startup`` starts the hub, ``lifespan.shutdown`` stops it; each
        answered ``complete``, or ``failed`` with the reason."""
        while True:
            phase = (await receive())["type"].removeprefix("lifespan.")
            try:
                await (self.start() if phase == "startup" else self.stop())
            except Exception as exc:
                await send({"type": f"lifespan.{phase}.failed", "message": failure(exc)})
                return
            await send({"type": f"lifespan.{phase}.complete"})
            if phase == "shutdown":
                return

    # ------------------------------------------------------------------ requests

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        api = self._api
        if api is None:
            try:
                api = await self._start(on_request=True)
            except Exception as exc:
                if not self._stopped:
                    logger.error("taskhub could not start: %s", failure(exc))
                await respond(send, self._error_api().error(503, request_of(scope)), scope)
                return
        request = request_of(scope)
        response = await self._answer(api, request, receive) if request else api.error(400)
        if response is not None:
            await respond(send, response, scope)

    async def _answer(
        self, api: HttpHandler, request: HttpRequest, receive: Receive
    ) -> HttpResponse | None:
        """The API's response, or None when the client left before its body arrived."""
        assert self._hosted is not None, "started"
        limit = self._hosted.body_limit
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return api.error(413, request)
        try:
            body = await read_body(receive, limit)
        except ClientGone:
            logger.info("client hung up before the answer to %s %s", request.method, request.path)
            return None
        if body is None:
            return api.error(413, request)
        request.body = body
        request.hung_up = lambda: disconnected(receive)
        response = await api.handle(request)
        return None if response.status == CLIENT_GONE else response  # nobody to answer

    def _error_api(self) -> HttpHandler:
        """What answers while nothing serves: the last API, or a bare one for its errors."""
        return self._last_api or HttpApi(Router())


def failure(exc: Exception) -> str:
    """An error as one line: the message of what a user can fix, else its kind too."""
    if isinstance(exc, TaskhubError):
        return str(exc)
    logger.error("taskhub failed to start", exc_info=exc)
    return f"taskhub failed to start: {describe_error(exc)}"


def request_of(scope: Scope) -> HttpRequest | None:
    """The request as the API sees it, body still unread; None when its target is not
    ASCII (the Sanic server refuses it with a 400 too)."""
    raw = scope.get("raw_path")
    try:
        if raw:
            path = raw.partition(b"?")[0].decode("ascii")
        else:  # a server that keeps no raw path: the decoded one, encoded again
            path = quote(scope["path"], safe=PATH_SAFE)
        query = scope.get("query_string", b"").decode("ascii")
    except UnicodeError:
        return None
    root = scope.get("root_path", "")
    if root:  # mounted: the API sees the path below the mount point
        prefix = quote(root, safe=PATH_SAFE)
        if path.startswith(prefix):
            path = path[len(prefix) :] or "/"
    headers: dict[str, str] = {}
    for name, raw in scope["headers"]:
        # The first of a repeated header, decoded as the Sanic server decodes it, without
        # the blanks around it (RFC 9110, 5.5) that uvicorn's httptools mode passes on.
        value = raw.strip(b" \t").decode(errors="surrogateescape")
        headers.setdefault(name.decode("latin-1"), value)
    client = scope.get("client")
    return HttpRequest(scope["method"], path, headers, b"", query, client[0] if client else "")


async def read_body(receive: Receive, limit: int) -> bytes | None:
    """The request body, or None once it exceeds ``limit`` bytes (the rest unread)."""
    message = await receive()
    chunks: list[bytes] = []
    size = 0
    while True:
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        if not message.get("more_body", False):
            if not chunks:
                return bytes(chunk)
            chunks.append(chunk)
            return b"".join(chunks)
        chunks.append(chunk)
        message = await receive()


async def disconnected(receive: Receive) -> None:
    """Returns once the client has gone: all the server sends after the whole body."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def respond(send: Send, response: HttpResponse, scope: Scope) -> None:
    """Write the API's response as it is; the server adds only framing headers."""
    body = response.body
    headers = [
        (name.lower().encode("latin-1"), value.encode("latin-1"))
        for name, value in response.headers.items()
    ]
    if response.content_type is not None and has_body(response.status):
        headers.append((b"content-type", response.content_type.encode("latin-1")))
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})


def has_body(status: int) -> bool:
    """Whether a response of ``status`` carries a body (and so a Content-Type)."""
    return status >= 200 and status not in (204, 304)


def _uncancel() -> None:
    """This task goes on after a cancellation it has handled."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        task.uncancel()


def _retrieved(future: asyncio.Future[HttpHandler]) -> None:
    """A failed start is reported to whoever waited; none may have: no warning then."""
    if not future.cancelled():
        future.exception()


# ``uvicorn taskhub.asgi:app``: the config TASKHUB_CONFIG names, loaded on first use.
app = TaskhubApp(from_environment)
