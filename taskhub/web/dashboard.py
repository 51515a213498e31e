"""``GET /dashboard`` and its data endpoints: a live view of traffic, the queue and its failures.

Off unless ``dashboard.enabled``: the routes then do not exist (404). The page
itself is static and holds no data, so it is served to anyone; it asks for the
token and sends it as ``Authorization: Bearer`` to the data endpoints, which
answer 401 without it. Because the token travels in a header and never in a
cookie, another site cannot make a visitor's browser retry jobs (no CSRF).

The page's Content-Security-Policy allows only its own inline script and style
(by hash) and requests to this server: even a value that slipped past the
page's escaping could not run script or send data elsewhere.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
from importlib import resources

from taskhub.bearer import bearer_token_ok
from taskhub.errors import BackendUnavailable, UsageError
from taskhub.http import HttpRequest, HttpResponse
from taskhub.monitoring.dashboard import Dashboard
from taskhub.store.outage import OutageLog
from taskhub.web.responses import NO_STORE, error_response, json_response, unavailable

logger = logging.getLogger(__name__)

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="taskhub dashboard"'}
MAX_JOB_ID = 256  # longer than any id a queue makes


def page() -> tuple[bytes, dict[str, str]]:
    """The page and its headers; the CSP names the hashes of its inline script and style."""
    text = resources.files("taskhub.web").joinpath("dashboard.html").read_text(encoding="utf-8")

    def hashes(tag: str) -> str:
        blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", text, re.DOTALL)
        digests = (base64.b64encode(hashlib.sha256(b.encode()).digest()).decode() for b in blocks)
        return " ".join(f"'sha256-{d}'" for d in digests)

    policy = (
        f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    headers = {
        "Content-Security-Policy": policy,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        **NO_STORE,
    }
    return text.encode(), headers


class DashboardEndpoints:
    """The page, its summary and its one action (retry a dead letter)."""

    def __init__(
        self,
        dashboard: Dashboard,
        token: str,
        retry_after_s: int,
        outage: OutageLog | None = None,
    ) -> None:
        self.dashboard = dashboard
        self.token = token
        self.retry_after_s = retry_after_s
        self.outage = outage or OutageLog("Redis (dashboard)", logger)
        body, headers = page()
        self.page_body, self.page_headers = body, headers

    def refusal(self, request: HttpRequest) -> HttpResponse | None:
        if bearer_token_ok(request.headers.get("authorization"), self.token):
            return None
        message = "send the dashboard token: Authorization: Bearer <dashboard.token>"
        return error_response(401, "unauthorized", message, {**CHALLENGE, **NO_STORE})

    def unavailable(self) -> HttpResponse:
        return unavailable(self.retry_after_s, headers=NO_STORE)

    async def show(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse(
            200, self.page_body, dict(self.page_headers), "text/html; charset=utf-8"
        )

    async def summary(self, request: HttpRequest) -> HttpResponse:
        denied = self.refusal(request)
        if denied is not None:
            return denied
        try:
            return json_response(200, await self.dashboard.summary(), NO_STORE)
        except BackendUnavailable:
            return self.unavailable()
        except UsageError as exc:  # a queue plugin without snapshot()
            return error_response(501, "not_implemented", str(exc), NO_STORE)

    async def retry(self, request: HttpRequest, job_id: str) -> HttpResponse:
        denied = self.refusal(request)
        if denied is not None:
            return denied
        if len(job_id) > MAX_JOB_ID:
            message = f"job_id is {len(job_id)} characters long; ids have at most {MAX_JOB_ID}"
            return error_response(400, "bad_request", message, NO_STORE)
        try:
            moved = await self.outage.call(self.dashboard.retry(job_id))
        except BackendUnavailable:
            return self.unavailable()
        if not moved:
            message = "no such dead letter (retried already, purged or expired)"
            return error_response(404, "not_found", message, NO_STORE)
        logger.info("dead letter %s queued again from the dashboard (%s)", job_id, request.client)
        return json_response(200, {"status": "queued", "job_id": job_id}, NO_STORE)
