"""taskhub's HTTP API: a request in, a response out, for every route, whatever the server.

Server plugins are adapters around :class:`HttpApi` (see :mod:`taskhub.http`);
the API decides every status code, body and header, so every server answers
alike. Every response carries the request's ``X-Request-ID``, and nothing that
goes wrong inside reaches the client as more than a 500 with an ``error_id``
that is also in the logged traceback.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from taskhub.components import Authenticator, QueueBackend
from taskhub.config.models import Settings
from taskhub.http import ApiOptions, HttpRequest, HttpResponse
from taskhub.limits.admin import LimitsAdmin
from taskhub.limits.admission import Admission
from taskhub.monitoring import request_id
from taskhub.monitoring.dashboard import Dashboard
from taskhub.monitoring.exporter import QueueDepth
from taskhub.monitoring.metrics import RequestMetrics
from taskhub.monitoring.schedules import ScheduleBoard
from taskhub.monitoring.traffic import TrafficRecorder
from taskhub.store.outage import OutageLog
from taskhub.web.admin import PREFIX as ADMIN_PREFIX
from taskhub.web.admin import WEIGHTS_PREFIX, LimitsEndpoint, WeightsEndpoint
from taskhub.web.batch import SubmitBatch
from taskhub.web.dashboard import DashboardEndpoints
from taskhub.web.docs import ApiDocs
from taskhub.web.openapi import build_spec
from taskhub.web.operations import Metrics, Ready, health
from taskhub.web.readiness import Check
from taskhub.web.responses import error_response, json_response
from taskhub.web.routing import Router
from taskhub.web.submission import SubmissionParser
from taskhub.web.tasks import READS, JobEndpoints, SubmitTask

if TYPE_CHECKING:
    from taskhub.monitoring.otel import Tracer

logger = logging.getLogger(__name__)

# What a server answers for a request that never reached the API, by status.
PROTOCOL_ERRORS = {
    400: ("bad_request", "the request is not valid HTTP/1.1"),
    404: ("not_found", "not found"),
    405: ("method_not_allowed", "method not allowed"),
    408: ("request_timeout", "the request did not arrive in time"),
    413: ("payload_too_large", "Request body exceeds the size limit"),
    431: ("request_header_fields_too_large", "the request's headers are too large"),
    499: ("client_closed_request", "the client closed the connection"),
    500: ("internal", "internal server error"),
    503: ("unavailable", "the server is shutting down; retry shortly"),
}


SUBMITS = ("/task", "/tasks")  # what the request counters count


@dataclass(frozen=True)
class ApiParts:
    """What the API serves, built by the kernel for a server process."""

    admission: Admission
    submissions: SubmissionParser
    authenticator: Authenticator
    queue: QueueBackend
    settings: Settings
    ready_checks: Mapping[str, Check]
    options: ApiOptions = field(default_factory=ApiOptions)
    request_metrics: RequestMetrics | None = None  # None: metrics are off
    queue_depth: QueueDepth | None = None
    traffic: TrafficRecorder | None = None  # None: the dashboard is off
    limits_admin: LimitsAdmin | None = None  # None: the admin endpoint is off
    tracer: Tracer | None = None  # None: tracing is off
    schedules: ScheduleBoard | None = None  # None: no schedules (or no dashboard)


class HttpApi:
    """Routes each request to its endpoint; see :class:`taskhub.context.HttpHandler`."""

    def __init__(self, router: Router, metrics: RequestMetrics | None = None) -> None:
        self.router = router
        self.metrics = metrics

    async def handle(self, request: HttpRequest) -> HttpResponse:
        rid = request_id.accept(request.headers.get("x-request-id"))
        request_id.current.set(rid)
        try:
            handler = self.router.fixed(request.method, request.path)
            if handler is not None:
                response = await handler(request)
            elif (match := self.router.find(request.method, request.path)) is None:
                response = error_response(
                    404, "not_found", f"Requested URL {request.path} not found"
                )
            elif match.handler is not None:
                response = await match.handler(request)
            elif match.param_handler is not None:
                response = await match.param_handler(request, match.param)
            else:
                message = f"Method {request.method} not allowed for URL {request.path}"
                allow = {"Allow": ", ".join(match.allowed)}
                response = error_response(405, "method_not_allowed", message, allow)
        except Exception as exc:
            response = self._internal_error(request, exc)
        response.headers[request_id.HEADER] = rid
        return response

    def error(self, status: int, request: HttpRequest | None = None) -> HttpResponse:
        code, message = PROTOCOL_ERRORS.get(status, ("http_error", "the request failed"))
        if request is not None:
            self._count(request, status, code)
            rid = request_id.accept(request.headers.get("x-request-id"))
            request_id.current.set(rid)  # the error's log lines carry it too
        else:
            rid = request_id.new_request_id()
        response = error_response(status, code, message)
        response.headers[request_id.HEADER] = rid
        return response

    def _internal_error(self, request: HttpRequest, exc: Exception) -> HttpResponse:
        error_id = uuid.uuid4().hex[:12]
        logger.error(
            "unhandled error %s on %s %s", error_id, request.method, request.path, exc_info=exc
        )
        self._count(request, 500, "internal")
        body = {"error": "internal", "message": "internal server error", "error_id": error_id}
        return json_response(500, body)

    def _count(self, request: HttpRequest, status: int, code: str) -> None:
        """A submission that failed before or around the endpoint still counts."""
        if self.metrics is None or request.method != "POST" or request.path not in SUBMITS:
            return
        if status >= 500:
            self.metrics.error.inc()
        elif status != 499:
            self.metrics.bad_request(code)


class TracedHttpApi(HttpApi):
    """The API with a span around each request (``tracing.enabled``): a subclass, so the
    untraced API pays nothing for it."""

    def __init__(self, router: Router, metrics: RequestMetrics | None, tracer: Tracer) -> None:
        super().__init__(router, metrics)
        self.tracer = tracer

    async def handle(self, request: HttpRequest) -> HttpResponse:
        route = self.router.route(request.path)
        with self.tracer.request(request.method, route, request.path, request.headers) as span:
            response = await super().handle(request)
            self.tracer.responded(span, response.status, response.headers.get(request_id.HEADER))
        return response


def build_api(parts: ApiParts) -> HttpApi:
    """Every route the config enables. Reads the dashboard page: run it off the event loop."""
    settings, options = parts.settings, parts.options
    retry_after_s = options.retry_after
    router = Router()
    submit = SubmitTask(
        parts.admission,
        parts.submissions,
        parts.authenticator,
        trusted_proxies=settings.limits.trusted_proxies,
        retry_after_s=retry_after_s,
        metrics=parts.request_metrics,
        traffic=parts.traffic,
    )
    router.add("POST", "/task", submit)
    router.add("POST", "/tasks", SubmitBatch(submit, options.batch_limit))
    # Job status and the dashboard read the queue: an outage is logged once for both.
    reads = OutageLog(READS, logger)
    jobs = JobEndpoints(parts.queue, parts.authenticator, retry_after_s, reads)
    router.add_param("GET", "/task/", jobs.status, segment=True)
    router.add_param("DELETE", "/task/", jobs.abort, segment=True)
    router.add("GET", "/health", health)
    router.add("GET", "/ready", Ready(parts.ready_checks, options.ready_timeout, retry_after_s))
    spec = build_spec(
        parts.authenticator.security_scheme(),
        metrics=settings.metrics.enabled,
        admin=parts.limits_admin is not None,
        dashboard=settings.dashboard.enabled,
        batch_limit=options.batch_limit,
    )
    docs = ApiDocs(spec)
    router.add("GET", "/openapi.json", docs.openapi)
    router.add("GET", "/docs", docs.page)
    router.add_param("GET", "/docs/", docs.asset, segment=True)
    if settings.metrics.enabled:
        router.add("GET", "/metrics", Metrics(parts.queue_depth))
    if parts.limits_admin is not None:
        admin = LimitsEndpoint(parts.limits_admin, settings.limits.admin.token, retry_after_s)
        for method in ("GET", "DELETE"):
            router.add_param(method, ADMIN_PREFIX, admin, segment=False)
        weights = WeightsEndpoint(parts.queue, settings.limits.admin.token, retry_after_s)
        for method in ("GET", "PUT", "DELETE"):
            router.add_param(method, WEIGHTS_PREFIX, weights, segment=False)
        logger.info("admin endpoint on: /admin/limits/{key} and /admin/weights/{user_id}")
    if settings.dashboard.enabled:
        assert parts.traffic is not None, "the dashboard needs the traffic recorder"
        dashboard = DashboardEndpoints(
            Dashboard(parts.traffic, parts.queue, outage=reads, schedules=parts.schedules),
            settings.dashboard.token,
            retry_after_s,
            reads,
        )
        router.add("GET", "/dashboard", dashboard.show)
        router.add("GET", "/dashboard/api/summary", dashboard.summary)
        router.add_param("POST", "/dashboard/api/failed/", dashboard.retry, "/retry", segment=True)
        logger.info("dashboard on: GET /dashboard")
    if parts.tracer is not None:
        return TracedHttpApi(router, parts.request_metrics, parts.tracer)
    return HttpApi(router, parts.request_metrics)
