"""The responses every route shares: JSON bodies, errors, and the 503 of an unreachable store.

Every error body is ``{"error": code, "message": message}``: a stable code for
programs and a sentence for people. Nothing here ever carries a traceback.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from taskhub.http import JSON, HttpResponse

STORE_DOWN = "the task store is unreachable; retry shortly"
NO_STORE = {"Cache-Control": "no-store"}


def json_response(
    status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None
) -> HttpResponse:
    return HttpResponse(status, orjson.dumps(body), dict(headers) if headers else {}, JSON)


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> HttpResponse:
    """``{"error": code, "message": message}``: a code for programs, a sentence for people."""
    return json_response(status, {"error": code, "message": message}, headers)


def retry_after(seconds: int) -> dict[str, str]:
    return {"Retry-After": str(seconds)}


def unavailable(
    seconds: int, message: str = STORE_DOWN, headers: Mapping[str, str] | None = None
) -> HttpResponse:
    """503 with Retry-After: Redis (or the queue's store) cannot be reached right now."""
    return error_response(503, "unavailable", message, {**retry_after(seconds), **(headers or {})})


def not_found(message: str = "no such job (or it has expired)") -> HttpResponse:
    return error_response(404, "not_found", message)
