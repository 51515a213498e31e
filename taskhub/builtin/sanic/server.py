"""``sanic``: the HTTP API (``POST /task``, ``GET``/``DELETE /task/{id}``, ``GET /health``,
``GET /ready``, ``GET /openapi.json``, ``GET /docs`` and, when enabled, ``/admin/limits/{key}``
and ``/dashboard``).

The request path is: size check (Sanic, 413), authentication when ``auth`` is
on (401), content type (415), parse and validate (400/422), the key's bound user
(403), one admission round trip (200/429, or 503 when Redis is down). Every
response, errors included, is JSON; no response carries a traceback. An
unexpected error is a 500 whose ``error_id`` is also in the logged traceback.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import logging
import socket
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import Field
from sanic import Request, Sanic
from sanic.application.state import ApplicationServerInfo
from sanic.config import Config as SanicConfig
from sanic.exceptions import RequestCancelled, SanicException
from sanic.handlers import ErrorHandler
from sanic.http.constants import HTTP
from sanic.response import HTTPResponse, html
from sanic.server import AsyncioServer

from taskhub import Options, Server, hookimpl
from taskhub.builtin.sanic.request_id import TaskhubRequest, request_id_of, tracked
from taskhub.errors import BackendUnavailable, StartupError
from taskhub.jobs import AbortOutcome
from taskhub.limits.admission import Decision, Outcome
from taskhub.limits.headers import rate_limit_headers, retry_after
from taskhub.limits.policy import RequestContext
from taskhub.monitoring import request_id
from taskhub.monitoring.exporter import CONTENT_TYPE, render
from taskhub.monitoring.metrics import RequestMetrics
from taskhub.monitoring.request_id import HEADER
from taskhub.web.admin import add_admin_routes
from taskhub.web.auth import forbidden, may_see, request_guard
from taskhub.web.client_ip import ClientAddress
from taskhub.web.dashboard import add_dashboard_routes
from taskhub.web.openapi import DOCS_HTML, build_spec
from taskhub.web.readiness import OK, readiness
from taskhub.web.responses import JSON, error_response, json_response
from taskhub.web.submission import SubmissionError, idempotent_job_id

if TYPE_CHECKING:
    from taskhub.hub.kernel import Hub

logger = logging.getLogger(__name__)

_app_numbers = itertools.count(1)


def is_json_media_type(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == JSON or (media.startswith("application/") and media.endswith("+json"))


class JsonErrorHandler(ErrorHandler):
    """Sanic's own errors (404, 405, 413, ...) and unexpected ones, as JSON without traces."""

    def __init__(self, metrics: RequestMetrics | None = None) -> None:
        super().__init__()
        self.metrics = metrics

    def response(self, request: Request, exception: BaseException) -> HTTPResponse:
        rid = request_id_of(request)
        request_id.current.set(rid)  # the error's log lines carry it too
        response = super().response(request, exception)
        response.headers[HEADER] = rid
        return response

    def default(self, request: Request, exception: BaseException) -> HTTPResponse:
        if isinstance(exception, RequestCancelled):  # the client hung up: nobody to answer
            logger.info("client hung up before the answer to %s %s", request.method, request.path)
            return error_response(499, "client_closed_request", "the client closed the connection")
        submission = self.metrics is not None and request.path == "/task"
        if isinstance(exception, SanicException):
            status = exception.status_code
            code = _ERROR_CODES.get(status, "http_error")
            if submission and request.method == "POST":
                assert self.metrics is not None
                if status >= 500:
                    self.metrics.error.inc()
                else:
                    self.metrics.bad_request(code)
            message = str(exception) or code.replace("_", " ")
            return error_response(status, code, message, dict(exception.headers or {}))
        if submission and request.method == "POST":
            assert self.metrics is not None
            self.metrics.error.inc()
        error_id = uuid.uuid4().hex[:12]
        logger.error(
            "unhandled error %s on %s %s",
            error_id,
            request.method,
            request.path,
            exc_info=exception,
        )
        return json_response(
            500,
            {"error": "internal", "message": "internal server error", "error_id": error_id},
        )


_ERROR_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "payload_too_large",
}


class SanicServer(Server):
    name = "sanic"

    class Config(Options):
        host: str = Field("127.0.0.1", min_length=1)
        port: int = Field(3000, ge=0, le=65_535, description="0 picks a free port")
        body_limit: int = Field(65_536, ge=256, le=64 * 1024 * 1024, description="bytes")
        keep_alive_timeout: float = Field(5, ge=0, le=3_600, description="seconds")
        request_timeout: float = Field(30, gt=0, le=3_600, description="seconds")
        graceful_shutdown: float = Field(
            5, ge=0, le=3_600, description="seconds to finish requests in flight"
        )
        backlog: int = Field(1024, ge=1, le=65_535)
        unavailable_retry_after: int = Field(
            1, ge=1, le=3_600, description="Retry-After on 503, seconds"
        )
        ready_timeout: float = Field(
            1, gt=0, le=60, description="seconds each GET /ready check may take"
        )

    config: Config

    def __init__(self, config: Options) -> None:
        super().__init__(config)
        self._server: AsyncioServer | None = None
        self._address = ""

    @property
    def address(self) -> str:
        return self._address

    @property
    def shutdown_grace(self) -> float:
        return self.config.graceful_shutdown

    def build_app(self, hub: Hub) -> Sanic:
        c = self.config
        sanic_config = SanicConfig()
        sanic_config.REQUEST_MAX_SIZE = c.body_limit
        sanic_config.KEEP_ALIVE_TIMEOUT = c.keep_alive_timeout
        sanic_config.REQUEST_TIMEOUT = c.request_timeout
        sanic_config.ACCESS_LOG = False
        sanic_config.FALLBACK_ERROR_FORMAT = "json"
        number = next(_app_numbers)
        app = Sanic(
            "taskhub" if number == 1 else f"taskhub_{number}",
            config=sanic_config,
            error_handler=JsonErrorHandler(hub.request_metrics),
            request_class=TaskhubRequest,
            configure_logging=False,
        )
        # Tell Sanic's start-up code rewriter that only HTTP/1.1 is served, so it drops
        # the empty alt-svc header it otherwise adds to every response.
        app.state.server_info.append(ApplicationServerInfo(settings={"version": HTTP.VERSION_1}))
        submit = self._submit_handler(hub)
        app.add_route(tracked(submit), "/task", methods=["POST"], name="submit_task")
        app.add_route(tracked(_health), "/health", methods=["GET"], name="health")
        app.add_route(tracked(self._ready_handler(hub)), "/ready", methods=["GET"], name="ready")
        openapi = tracked(_openapi_handler(hub))
        app.add_route(openapi, "/openapi.json", methods=["GET"], name="openapi")
        app.add_route(tracked(_docs), "/docs", methods=["GET"], name="docs")
        status, abort = self._job_handlers(hub)
        app.add_route(tracked(status), "/task/<job_id:str>", methods=["GET"], name="task_status")
        app.add_route(tracked(abort), "/task/<job_id:str>", methods=["DELETE"], name="abort_task")
        add_admin_routes(app, hub, c.unavailable_retry_after)
        add_dashboard_routes(app, hub, c.unavailable_retry_after)
        if hub.settings.metrics.enabled:
            metrics = tracked(_metrics_handler(hub))
            app.add_route(metrics, "/metrics", methods=["GET"], name="metrics")
        return app

    def _submit_handler(self, hub: Hub) -> Callable[[Request], Any]:
        admission = hub.admission
        parser = hub.submissions
        metrics = hub.request_metrics
        traffic = hub.traffic  # None unless the dashboard is on
        guard = request_guard(hub.authenticator)
        clock = time.perf_counter
        assert admission is not None
        retry_headers = {"Retry-After": str(self.config.unavailable_retry_after)}
        header_names = sorted({r.header for r in admission.rules if r.source == "header"})
        client_address = (
            ClientAddress(hub.settings.limits.trusted_proxies)
            if any(r.source == "ip" for r in admission.rules)
            else None
        )

        def refused(code: str, response: HTTPResponse) -> HTTPResponse:
            if metrics is not None:
                metrics.bad_request(code)
            return response

        def rejected(exc: SubmissionError) -> HTTPResponse:
            return refused(exc.code, json_response(exc.status, exc.body()))

        async def submit(request: Request) -> HTTPResponse:
            bound = None
            if guard is not None:
                principal = guard(request)
                if isinstance(principal, HTTPResponse):
                    return refused("unauthorized", principal)
                bound = principal.user_id
            content_type = request.headers.get("content-type")
            if content_type is not None and not is_json_media_type(content_type):
                message = "send the body as application/json"
                code = "unsupported_media_type"
                return refused(code, error_response(415, code, message))
            try:
                submission = parser.parse(request.body)
                job_id = idempotent_job_id(
                    submission.user_id, request.headers.get("idempotency-key")
                )
            except SubmissionError as exc:
                return rejected(exc)
            if bound is not None and bound != submission.user_id:
                return refused("forbidden", forbidden(bound, submission.user_id))
            headers = request.headers
            context = RequestContext(
                user_id=submission.user_id,
                task=submission.spec.name,
                client_ip=(
                    client_address.resolve(request.ip, headers.get("x-forwarded-for"))
                    if client_address is not None
                    else ""
                ),
                headers={name: headers.get(name, "") for name in header_names},
            )
            started = clock()
            try:
                decision = await admission.admit(
                    submission.spec, context, submission.payload, job_id=job_id
                )
            except SubmissionError as exc:  # the queue cannot store the payload
                return rejected(exc)
            except BackendUnavailable:
                if metrics is not None:
                    metrics.admission_time(clock() - started)
                    metrics.unavailable.inc()
                return error_response(
                    503,
                    "unavailable",
                    "the task store is unreachable; retry shortly",
                    retry_headers,
                )
            if metrics is not None:
                metrics.admission_time(clock() - started)
                metrics.decided(decision)
            if traffic is not None:
                traffic.decided(decision, context)
            return decision_response(decision, submission.spec.name, retry_headers)

        return submit

    def _ready_handler(self, hub: Hub) -> Callable[[Request], Any]:
        """``GET /ready``: 200 while Redis and the queue answer, else 503 with the reason."""
        timeout = self.config.ready_timeout
        retry_headers = {"Retry-After": str(self.config.unavailable_retry_after)}

        async def ready(request: Request) -> HTTPResponse:
            checks = await readiness(hub, timeout)
            failed = {name: outcome for name, outcome in checks.items() if outcome != OK}
            if not failed:
                return json_response(200, {"status": "ready", "checks": checks})
            reason = "; ".join(f"{name}: {outcome}" for name, outcome in failed.items())
            body = {"status": "not_ready", "reason": reason, "checks": checks}
            return json_response(503, body, retry_headers)

        return ready

    def _job_handlers(self, hub: Hub) -> tuple[Callable[..., Any], Callable[..., Any]]:
        """``GET /task/{id}`` (its state) and ``DELETE /task/{id}`` (abort it)."""
        queue = hub.queue
        guard = request_guard(hub.authenticator)
        retry_after = {"Retry-After": str(self.config.unavailable_retry_after)}

        def unavailable() -> HTTPResponse:
            message = "the task store is unreachable; retry shortly"
            return error_response(503, "unavailable", message, retry_after)

        def not_found() -> HTTPResponse:
            return error_response(404, "not_found", "no such job (or it has expired)")

        async def status(request: Request, job_id: str) -> HTTPResponse:
            principal = None
            if guard is not None:
                principal = guard(request)
                if isinstance(principal, HTTPResponse):
                    return principal
            try:
                job = await queue.status(job_id)
            except BackendUnavailable:
                return unavailable()
            if job is None or not may_see(principal, job.user_id):
                return not_found()  # another user's job: its existence is not told
            return json_response(200, job.to_json())

        async def abort(request: Request, job_id: str) -> HTTPResponse:
            if guard is not None:
                principal = guard(request)
                if isinstance(principal, HTTPResponse):
                    return principal
                if principal.user_id is not None:
                    try:
                        job = await queue.status(job_id)
                    except BackendUnavailable:
                        return unavailable()
                    if job is None or not may_see(principal, job.user_id):
                        return not_found()
            try:
                result = await queue.abort(job_id)
            except BackendUnavailable:
                return unavailable()
            if result.job is None:
                return not_found()
            body = result.job.to_json()
            if result.outcome is AbortOutcome.FINISHED:
                message = f"the job has already finished ({body['status']})"
                return json_response(409, {"error": "conflict", "message": message, "job": body})
            return json_response(202 if result.outcome is AbortOutcome.ABORTING else 200, body)

        return status, abort

    def bind(self) -> socket.socket:
        """Bind the listening socket ourselves: Sanic reads port 0 as "use 8000"."""
        c = self.config
        try:
            family, kind, proto, _, address = socket.getaddrinfo(
                c.host, c.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0]
            sock = socket.socket(family, kind, proto)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(address)
            except OSError:
                sock.close()
                raise
        except OSError as exc:
            reason = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
            raise StartupError(f"cannot listen on {c.host}:{c.port}: {reason or exc}") from exc
        return sock

    async def start(self, hub: Hub) -> None:
        c = self.config
        app = self.build_app(hub)
        sock = self.listen_socket or self.bind()
        server = await app.create_server(sock=sock, backlog=c.backlog, access_log=False)
        assert server is not None
        await server.startup()
        await server.before_start()
        await server.start_serving()
        await server.after_start()
        self._server = server
        host, port = server.server.sockets[0].getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        self._address = f"http://{shown}:{port}"

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


def decision_response(decision: Decision, task: str, full_headers: dict[str, str]) -> HTTPResponse:
    headers = rate_limit_headers(decision)
    outcome = decision.outcome
    if outcome is Outcome.REFUSED:
        wait = retry_after(decision)
        rule = decision.deciding
        return json_response(
            429,
            {
                "error": "rate_limited",
                "message": f"rate limit {rule.name if rule else ''!r} reached; retry in {wait} s",
                "policy": rule.name if rule else "",
                "refused_by": [r.name for r in decision.refusing],
                "retry_after": wait,
            },
            headers,
        )
    if outcome is Outcome.FULL:
        return error_response(
            503, "queue_full", "the queue is full; retry shortly", {**headers, **full_headers}
        )
    body: dict[str, Any] = {"status": "queued", "job_id": decision.job_id, "task": task}
    if outcome is Outcome.DUPLICATE:
        body["replayed"] = True
        headers["Idempotent-Replayed"] = "true"
    return json_response(200, body, headers)


def _metrics_handler(hub: Hub) -> Callable[[Request], Any]:
    """``GET /metrics``: the server's, and with ``taskhub run`` the worker's, metrics."""
    depth = hub.queue_depth

    async def metrics(request: Request) -> HTTPResponse:
        return HTTPResponse(await render(depth), content_type=CONTENT_TYPE)

    return metrics


async def _health(request: Request) -> HTTPResponse:
    return json_response(200, {"status": "ok"})


def _openapi_handler(hub: Hub) -> Callable[[Request], Any]:
    """The document is the same for every request, so it is encoded once."""
    settings = hub.settings
    spec = build_spec(
        hub.authenticator.security_scheme(),
        metrics=settings.metrics.enabled,
        admin=settings.limits.admin.enabled,
        dashboard=settings.dashboard.enabled,
    )
    document = orjson.dumps(spec)

    async def openapi(request: Request) -> HTTPResponse:
        return HTTPResponse(document, content_type=JSON)

    return openapi


async def _docs(request: Request) -> HTTPResponse:
    return html(DOCS_HTML)


@hookimpl
def register_servers(register: Callable[[type[Server]], None]) -> None:
    register(SanicServer)
