"""Reading the API's answers: a typed body for the statuses a call expects, an exception
(:mod:`taskhub.client.errors`) for every other.

The types are the server's own models (:mod:`taskhub.web.models`, the ones its OpenAPI
document is made from). A body is read as a tolerant reader does: fields this client
does not know (a newer server's) are left out, rather than failing the call.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from taskhub.client.errors import (
    ClientError,
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    RateLimited,
    Unauthorized,
    Unavailable,
    UnexpectedResponse,
)
from taskhub.web.models import FieldProblem, Job

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")

REQUEST_ID = "x-request-id"
INVALID = frozenset({400, 413, 415, 422})


def typed(model: type[M], data: Any, response: httpx.Response | None = None) -> M:
    """``data`` as ``model``, ignoring fields the model does not have."""
    if isinstance(data, Mapping):
        data = {key: value for key, value in data.items() if key in model.model_fields}
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise UnexpectedResponse(
            f"the answer is not a {model.__name__}: {exc.errors(include_url=False)[0]['msg']}",
            **_context(response, data),
        ) from exc


def answer(response: httpx.Response, expected: Mapping[int, Callable[[Any], T]]) -> T:
    """The body read by ``expected[status]``, or the exception the status stands for."""
    read = expected.get(response.status_code)
    if read is None:
        raise error_for(response)
    return read(body_of(response))


def body_of(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:  # not JSON: a proxy's page, say
        raise UnexpectedResponse(
            f"HTTP {response.status_code} with a body that is not JSON",
            **_context(response, response.text[:200]),
        ) from None


def error_for(response: httpx.Response) -> ClientError:
    """The exception for an error answer, with the fields the server gave."""
    status = response.status_code
    try:
        body = response.json()
    except ValueError:
        body = None
    fields = body if isinstance(body, dict) else {}
    message = str(fields.get("message") or f"HTTP {status} {response.reason_phrase}")
    context = _context(response, body)
    if status == 429:
        return rate_limited(fields, context, response.headers.get("retry-after"))
    if status in INVALID:
        return invalid(fields, context)
    if status == 401:
        return Unauthorized(message, **context)
    if status == 403:
        return Forbidden(message, **context)
    if status == 404:
        return NotFound(message, **context)
    if status == 409 and isinstance(fields.get("job"), dict):
        return Conflict(message, job=typed(Job, fields["job"], response), **context)
    if status == 503:
        return Unavailable(
            message, retry_after=seconds(response.headers.get("retry-after")), **context
        )
    return UnexpectedResponse(message, **context)


def rate_limited(
    fields: Mapping[str, Any], context: dict[str, Any], header: str | None = None
) -> RateLimited:
    """A 429's body, or a batch item refused by a rate limit, as :class:`RateLimited`."""
    wait = fields.get("retry_after")
    retry_after = wait if isinstance(wait, int) else int(seconds(header) or 1)
    policy = str(fields.get("policy", ""))
    message = fields.get("message") or f"rate limit {policy!r} reached; retry in {retry_after} s"
    refused = fields.get("refused_by")
    return RateLimited(
        str(message),
        retry_after=retry_after,
        policy=policy,
        refused_by=[str(r) for r in refused] if isinstance(refused, list) else [policy],
        **context,
    )


def invalid(fields: Mapping[str, Any], context: dict[str, Any]) -> Invalid:
    """A 400/413/415/422's body, or a batch item's problems, as :class:`Invalid`."""
    problems = [typed(FieldProblem, p) for p in fields.get("problems") or []]
    summary = "; ".join(f"{p.field}: {p.message}" for p in problems)
    message = fields.get("message") or summary or "invalid request"
    return Invalid(str(message), problems=problems, **context)


def seconds(header: str | None) -> float | None:
    """A Retry-After header in seconds (the API sends whole seconds, never a date)."""
    try:
        return max(0.0, float(header)) if header is not None else None
    except ValueError:
        return None


def _context(response: httpx.Response | None, body: Any) -> dict[str, Any]:
    if response is None:
        return {"body": body}
    code = body.get("error") if isinstance(body, dict) else None
    return {
        "status": response.status_code,
        "code": code if isinstance(code, str) else None,
        "request_id": response.headers.get(REQUEST_ID),
        "body": body,
    }
