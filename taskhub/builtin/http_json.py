"""JSON responses, errors included, for every route of the Sanic server."""

from __future__ import annotations

from typing import Any

import orjson
from sanic.response import HTTPResponse

JSON = "application/json"


def json_response(
    status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> HTTPResponse:
    return HTTPResponse(orjson.dumps(body), status=status, headers=headers, content_type=JSON)


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> HTTPResponse:
    """``{"error": code, "message": message}``: a code for programs, a sentence for people."""
    return json_response(status, {"error": code, "message": message}, headers)
