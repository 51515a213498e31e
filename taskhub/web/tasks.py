"""The task endpoints: ``POST /task`` (admit or refuse), ``GET`` and ``DELETE /task/{id}``
(``GET /task/{id}?wait=N`` answers once the job settles, or after N seconds).

The submission path is: authentication when ``auth`` is on (401), content type
(415), parse and validate (400/422), the key's bound user (403), then one
admission round trip: 200 queued, 429 refused, 503 when the queue is full or
Redis is down. Every answer carries the rate-limit headers of the decision.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from taskhub.components import Authenticator, Principal, QueueBackend
from taskhub.errors import BackendUnavailable, UnstorablePayload
from taskhub.http import JSON, HttpRequest, HttpResponse
from taskhub.jobs import AbortOutcome, JobInfo
from taskhub.limits.admission import Admission, Decision
from taskhub.limits.headers import rate_limit_headers, retry_after
from taskhub.limits.policy import Outcome, RequestContext
from taskhub.monitoring.metrics import RequestMetrics
from taskhub.monitoring.traffic import TrafficRecorder
from taskhub.store.outage import OutageLog
from taskhub.web.auth import forbidden, may_see, request_auth
from taskhub.web.client_ip import ClientAddress, Network
from taskhub.web.responses import error_response, json_response, not_found, unavailable
from taskhub.web.submission import (
    SubmissionError,
    SubmissionParser,
    idempotent_job_id,
    unstorable_payload,
)
from taskhub.web.waiting import HungUp, unless_hung_up, wait_seconds

logger = logging.getLogger(__name__)

# What the queue's reads for the API (a job's status, the dashboard) log an outage as.
READS = "Redis (job status and dashboard)"

NO_HEADERS: Mapping[str, str] = MappingProxyType({})  # no rule keys on a header


def is_json_media_type(content_type: str) -> bool:
    if content_type == JSON:  # what nearly every client sends
        return True
    media = content_type.split(";", 1)[0].strip().lower()
    return media == JSON or (media.startswith("application/") and media.endswith("+json"))


class SubmitTask:
    """``POST /task``: everything from the request's bytes to the admission's answer."""

    def __init__(
        self,
        admission: Admission,
        parser: SubmissionParser,
        authenticator: Authenticator,
        *,
        trusted_proxies: list[Network],
        retry_after_s: int,
        metrics: RequestMetrics | None = None,
        traffic: TrafficRecorder | None = None,
    ) -> None:
        self.admission = admission
        self.parser = parser
        self.auth = request_auth(authenticator)
        self.metrics = metrics
        self.traffic = traffic  # None unless the dashboard is on
        self.retry_after_s = retry_after_s
        rules = admission.rules
        self.header_names = sorted({r.header for r in rules if r.source == "header"})
        ip_keyed = any(r.source == "ip" for r in rules)
        self.client_address = ClientAddress(trusted_proxies) if ip_keyed else None

    def refused(self, code: str, response: HttpResponse) -> HttpResponse:
        if self.metrics is not None:
            self.metrics.bad_request(code)
        return response

    def rejected(self, exc: SubmissionError) -> HttpResponse:
        return self.refused(exc.code, json_response(exc.status, exc.body()))

    def screen(self, request: HttpRequest) -> HttpResponse | Principal | None:
        """Authentication (401) and content type (415): the refusal, else who asks."""
        principal = None
        if self.auth is not None:
            principal = self.auth(request)
            if isinstance(principal, HttpResponse):
                return self.refused("unauthorized", principal)
        content_type = request.headers.get("content-type")
        if content_type is not None and not is_json_media_type(content_type):
            code = "unsupported_media_type"
            message = "send the body as application/json"
            return self.refused(code, error_response(415, code, message))
        return principal

    def sender(self, request: HttpRequest) -> tuple[str, Mapping[str, str]]:
        """The client's IP and the headers the rules key on (empty when none does)."""
        headers = request.headers
        client_address = self.client_address
        client_ip = (
            client_address.resolve(request.client, headers.get("x-forwarded-for"))
            if client_address is not None
            else ""
        )
        keyed = (
            {name: headers.get(name) or "" for name in self.header_names}
            if self.header_names
            else NO_HEADERS
        )
        return client_ip, keyed

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        headers = request.headers
        principal = self.screen(request)
        if isinstance(principal, HttpResponse):
            return principal
        bound = None if principal is None else principal.user_id
        try:
            submission = self.parser.parse(request.body)
            job_id = idempotent_job_id(submission.user_id, headers.get("idempotency-key"))
        except SubmissionError as exc:
            return self.rejected(exc)
        if bound is not None and bound != submission.user_id:
            return self.refused("forbidden", forbidden(bound, submission.user_id))
        client_ip, keyed = self.sender(request)
        context = RequestContext(submission.user_id, submission.spec.name, client_ip, keyed)
        metrics = self.metrics
        started = time.perf_counter()
        try:
            decision = await self.admission.admit(
                submission.spec,
                context,
                submission.payload,
                job_id=job_id,
                priority=submission.priority,
                run_at=submission.run_at,
            )
        except UnstorablePayload as exc:  # valid JSON the queue cannot store
            return self.rejected(unstorable_payload(exc.reason))
        except BackendUnavailable:
            if metrics is not None:
                metrics.admission_time(time.perf_counter() - started)
                metrics.unavailable.inc()
            return unavailable(self.retry_after_s)
        if metrics is not None:
            metrics.admission_time(time.perf_counter() - started)
            metrics.decided(decision)
        if self.traffic is not None:
            self.traffic.decided(decision, context)
        return decision_response(decision, submission.spec.name, self.retry_after_s)


def decision_response(decision: Decision, task: str, full_retry_after: int) -> HttpResponse:
    """200 queued (or replayed), 429 refused, 503 queue full: each with its rate-limit headers."""
    headers = rate_limit_headers(decision)
    status, body = decision_body(decision, task)
    if status == 503:
        headers["Retry-After"] = str(full_retry_after)
    elif "replayed" in body:
        headers["Idempotent-Replayed"] = "true"
    return json_response(status, body, headers)


def decision_body(decision: Decision, task: str) -> tuple[int, dict[str, Any]]:
    """A decision's status and body, as ``POST /task`` answers and ``POST /tasks`` lists."""
    outcome = decision.outcome
    if outcome is Outcome.REFUSED:
        wait = retry_after(decision)
        rule = decision.deciding
        name = rule.name if rule else ""
        body: dict[str, Any] = {
            "error": "rate_limited",
            "message": f"rate limit {name!r} reached; retry in {wait} s",
            "policy": name,
            "refused_by": [r.name for r in decision.refusing],
            "retry_after": wait,
        }
        return 429, body
    if outcome is Outcome.FULL:
        return 503, {"error": "queue_full", "message": "the queue is full; retry shortly"}
    body = {"status": "queued", "job_id": decision.job_id, "task": task}
    if outcome is Outcome.DUPLICATE:
        body["replayed"] = True
    return 200, body


class JobEndpoints:
    """``GET /task/{id}`` (its state) and ``DELETE /task/{id}`` (abort it).

    A key bound to a user sees only that user's jobs: another user's job is a 404,
    so that its existence is not told.
    """

    def __init__(
        self,
        queue: QueueBackend,
        authenticator: Authenticator,
        retry_after_s: int,
        outage: OutageLog | None = None,
    ) -> None:
        self.queue = queue
        self.auth = request_auth(authenticator)
        self.retry_after_s = retry_after_s
        self.outage = outage or OutageLog(READS, logger)

    def principal(self, request: HttpRequest) -> Principal | HttpResponse | None:
        """Who asks (None without authentication), or the 401 that refuses them."""
        return None if self.auth is None else self.auth(request)

    async def visible(self, principal: Principal | None, job_id: str) -> JobInfo | HttpResponse:
        """The job, or the 404/503 to answer instead: another user's job is not found."""
        try:
            job = await self.outage.call(self.queue.status(job_id))
        except BackendUnavailable:
            return unavailable(self.retry_after_s)
        if job is None or not may_see(principal, job.user_id):
            return not_found()
        return job

    async def status(self, request: HttpRequest, job_id: str) -> HttpResponse:
        """The job's state; with ``?wait=N``, once it settles or after N seconds."""
        principal = self.principal(request)
        if isinstance(principal, HttpResponse):
            return principal
        wait = wait_seconds(request.query) if request.query else None
        if isinstance(wait, HttpResponse):
            return wait
        job = await self.visible(principal, job_id)
        if isinstance(job, HttpResponse) or wait is None or job.status.finished:
            return job if isinstance(job, HttpResponse) else json_response(200, job.to_json())
        try:
            waited = await unless_hung_up(
                self.outage.call(self.queue.wait(job_id, wait)), request.hung_up
            )
        except BackendUnavailable:
            return unavailable(self.retry_after_s)
        except HungUp:
            return error_response(499, "client_closed_request", "the client closed the connection")
        if waited is None:  # gone meanwhile (expired or purged)
            return not_found()
        return json_response(200, waited.to_json())

    async def abort(self, request: HttpRequest, job_id: str) -> HttpResponse:
        principal = self.principal(request)
        if isinstance(principal, HttpResponse):
            return principal
        if principal is not None and principal.user_id is not None:  # only their own jobs
            job = await self.visible(principal, job_id)
            if isinstance(job, HttpResponse):
                return job
        try:
            result = await self.outage.call(self.queue.abort(job_id))
        except BackendUnavailable:
            return unavailable(self.retry_after_s)
        if result.job is None:
            return not_found()
        body = result.job.to_json()
        if result.outcome is AbortOutcome.FINISHED:
            message = f"the job has already finished ({body['status']})"
            return json_response(409, {"error": "conflict", "message": message, "job": body})
        return json_response(202 if result.outcome is AbortOutcome.ABORTING else 200, body)
