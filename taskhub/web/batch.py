"""``POST /tasks``: up to ``server.batch_limit`` submissions, decided in one round trip.

Each item is a ``POST /task`` body, read by the very parser ``POST /task`` uses
(so a field added there is accepted here), plus an optional ``idempotency_key``
that stands for that item's Idempotency-Key header. Items are decided in order by
the same admission script, each seeing the charges of those before it; they
leave for Redis in one write (one per master, concurrently, on a cluster).

The answer is 200 with one result per item: ``queued``, ``rate_limited``,
``queue_full``, ``invalid`` (its problems, as a single submission's 422 names
them; also an item for a user the API key is not bound to) or, when only some of
a cluster's masters answer, ``unavailable``. Nothing is charged or queued for an
item that is not ``queued``, and a bad item does not spoil the others. The
rate-limit headers are those of the last item decided. The batch as a whole is
refused before anything is decided when it cannot be read (400/422, as a single
body), is empty (422) or is longer than ``server.batch_limit`` (413), and is a
503 when Redis cannot be reached at all.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Annotated, Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from taskhub.errors import BackendUnavailable, UnstorablePayload
from taskhub.http import HttpRequest, HttpResponse
from taskhub.limits.admission import Ask, Decision
from taskhub.limits.headers import rate_limit_headers
from taskhub.limits.policy import Outcome, RequestContext
from taskhub.web.auth import not_yours
from taskhub.web.models import FieldProblem
from taskhub.web.responses import STORE_DOWN, json_response, unavailable
from taskhub.web.submission import (
    IDEMPOTENCY_KEY,
    SubmissionError,
    TaskRequest,
    idempotent_job_id,
    request_error,
    unstorable_payload,
)
from taskhub.web.tasks import SubmitTask, decision_body

ITEM_KEY = "idempotency_key"
_STATUS = {Outcome.REFUSED: "rate_limited", Outcome.FULL: "queue_full"}


class BatchRequest(BaseModel):
    """``{"tasks": [item, ...]}``; each item is checked on its own, as a single body."""

    model_config = ConfigDict(extra="forbid", strict=True)

    tasks: Annotated[list[Any], Field(min_length=1)]


class BatchItem(TaskRequest):
    """One item, for the OpenAPI document: a ``POST /task`` body and its own key."""

    idempotency_key: (
        Annotated[
            str,
            Field(
                pattern=IDEMPOTENCY_KEY.pattern,
                description="as the Idempotency-Key header of POST /task, for this item",
            ),
        ]
        | None
    ) = None


class SubmitBatch:
    """``POST /tasks``: authentication and content type as ``POST /task``, then per item."""

    def __init__(self, single: SubmitTask, limit: int) -> None:
        self.single = single
        self.limit = limit

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        single = self.single
        principal = single.screen(request)
        if isinstance(principal, HttpResponse):
            return principal
        bound = None if principal is None else principal.user_id
        if request.headers.get("idempotency-key") is not None:
            # Refused rather than ignored: a client retrying with it would queue twice.
            message = "POST /tasks takes a key per item (idempotency_key), not this header"
            return single.rejected(SubmissionError(400, "invalid_idempotency_key", message))
        try:
            items = self.items(request.body)
        except SubmissionError as exc:
            return single.rejected(exc)
        client_ip, keyed = single.sender(request)
        results: list[dict[str, Any]] = []
        asks: list[tuple[int, Ask]] = []
        for item in items:
            try:
                ask = self.ask(item, bound, client_ip, keyed)
            except SubmissionError as exc:
                results.append(self.invalid(exc))
                continue
            asks.append((len(results), ask))
            results.append({})
        last = await self.decide(asks, results)
        if last is None and any(r["status"] == "unavailable" for r in results):
            return unavailable(single.retry_after_s)  # Redis down: nothing was decided
        headers = rate_limit_headers(last) if last is not None else {}
        return json_response(200, {"results": results}, headers)

    def items(self, body: bytes) -> list[Any]:
        try:
            items = BatchRequest.model_validate_json(body).tasks
        except ValidationError as exc:
            raise request_error(exc) from None
        if len(items) > self.limit:
            message = (
                f"a batch holds at most {self.limit} tasks (server.batch_limit), not {len(items)}"
            )
            raise SubmissionError(413, "batch_too_large", message)
        return items

    def ask(self, item: Any, bound: str | None, client_ip: str, keyed: Mapping[str, str]) -> Ask:
        """The item as a single submission would be read: SubmissionError if it is bad."""
        key = None
        if isinstance(item, dict) and ITEM_KEY in item:
            item = dict(item)
            key = item.pop(ITEM_KEY)
            if key is not None and not isinstance(key, str):
                raise _problem(422, "invalid_request", ITEM_KEY, "must be a string")
        submission = self.single.parser.parse(_encode(item))
        try:
            job_id = idempotent_job_id(submission.user_id, key)
        except SubmissionError as exc:
            raise _problem(422, exc.code, ITEM_KEY, exc.message) from None
        user_id = submission.user_id
        if bound is not None and bound != user_id:
            raise _problem(403, "forbidden", "user_id", not_yours(bound, user_id))
        context = RequestContext(user_id, submission.spec.name, client_ip, keyed)
        return Ask(
            submission.spec,
            context,
            submission.payload,
            job_id,
            priority=submission.priority,
            run_at=submission.run_at,
        )

    async def decide(
        self, asks: list[tuple[int, Ask]], results: list[dict[str, Any]]
    ) -> Decision | None:
        """Admit the asks, fill in their results; the last decision (for the headers)."""
        if not asks:
            return None
        single = self.single
        metrics, traffic = single.metrics, single.traffic
        started = time.perf_counter()
        outcomes = await single.admission.admit_many([ask for _, ask in asks])
        if metrics is not None:
            metrics.admission_time(time.perf_counter() - started)
        last = None
        for (index, ask), outcome in zip(asks, outcomes, strict=True):
            if isinstance(outcome, UnstorablePayload):
                results[index] = self.invalid(unstorable_payload(outcome.reason))
            elif isinstance(outcome, BackendUnavailable):
                if metrics is not None:
                    metrics.unavailable.inc()
                results[index] = {
                    "status": "unavailable",
                    "error": "unavailable",
                    "message": STORE_DOWN,
                    "retry_after": single.retry_after_s,
                }
            elif isinstance(outcome, Decision):
                last = outcome
                if metrics is not None:
                    metrics.decided(outcome)
                if traffic is not None:
                    traffic.decided(outcome, ask.request)
                results[index] = self.decided(outcome, ask.spec.name)
            else:  # admit_many returns no other exception
                raise outcome
        return last

    def decided(self, decision: Decision, task: str) -> dict[str, Any]:
        _, body = decision_body(decision, task)
        status = _STATUS.get(decision.outcome)
        if status is None:
            return body  # queued: {"status": "queued", ...}
        if decision.outcome is Outcome.FULL:
            body["retry_after"] = self.single.retry_after_s
        return {"status": status, **body}

    def invalid(self, exc: SubmissionError) -> dict[str, Any]:
        if self.single.metrics is not None:
            self.single.metrics.bad_request(exc.code)
        body = exc.body()
        if "problems" not in body:  # an item that is not an object: no field to name
            body["problems"] = [{"field": "body", "message": exc.message}]
        return {"status": "invalid", **body}


def _problem(status: int, code: str, field: str, message: str) -> SubmissionError:
    return SubmissionError(
        status, code, f"{field}: {message}", [FieldProblem(field=field, message=message)]
    )


def _encode(item: Any) -> bytes:
    """The item as JSON again, for the single body's parser. orjson refuses integers over
    64 bits, which JSON allows: the standard library writes those (the queue then
    refuses them as it would in a single body)."""
    try:
        return orjson.dumps(item)
    except TypeError:
        return json.dumps(item).encode()
