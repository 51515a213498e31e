"""The endpoints for whoever runs taskhub: ``/health``, ``/ready`` and ``/metrics``."""

from __future__ import annotations

from collections.abc import Mapping

from taskhub.http import HttpRequest, HttpResponse
from taskhub.monitoring.exporter import CONTENT_TYPE, QueueDepth, render
from taskhub.web.readiness import OK, Check, readiness
from taskhub.web.responses import json_response, retry_after

HEALTHY = json_response(200, {"status": "ok"})


async def health(request: HttpRequest) -> HttpResponse:
    """The process serves (liveness)."""
    return HttpResponse(HEALTHY.status, HEALTHY.body, {}, HEALTHY.content_type)


class Ready:
    """``GET /ready``: 200 while Redis and the queue answer, else 503 with the reason."""

    def __init__(self, checks: Mapping[str, Check], timeout: float, retry_after_s: int) -> None:
        self.checks = dict(checks)
        self.timeout = timeout
        self.retry_after_s = retry_after_s

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        checks = await readiness(self.checks, self.timeout)
        failed = {name: outcome for name, outcome in checks.items() if outcome != OK}
        if not failed:
            return json_response(200, {"status": "ready", "checks": checks})
        reason = "; ".join(f"{name}: {outcome}" for name, outcome in failed.items())
        body = {"status": "not_ready", "reason": reason, "checks": checks}
        return json_response(503, body, retry_after(self.retry_after_s))


class Metrics:
    """``GET /metrics``: the server's, and with ``taskhub run`` the worker's, metrics."""

    def __init__(self, depth: QueueDepth | None) -> None:
        self.depth = depth

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse(200, await render(self.depth), {}, CONTENT_TYPE)
