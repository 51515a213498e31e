"""Request ids on the Sanic server: read or made once per request, returned on every response.

Handlers are wrapped (:func:`tracked`) rather than run through Sanic middleware,
which costs far more per request; the error handler tags the responses no
handler made (404, 413, 500, ...).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any

from sanic import Request
from sanic.response import HTTPResponse

from taskhub.monitoring import request_id
from taskhub.monitoring.request_id import HEADER


class TaskhubRequest(Request):
    """A request that knows its id: the client's ``X-Request-ID`` if sane, else a new one."""

    __slots__ = ("_request_id",)

    @property
    def request_id(self) -> str:
        value: str | None = getattr(self, "_request_id", None)
        if value is None:
            value = self._request_id = request_id.accept(self.headers.get(HEADER))
        return value


def request_id_of(request: Request | None) -> str:
    if isinstance(request, TaskhubRequest):
        return request.request_id
    headers = getattr(request, "headers", None)
    return request_id.accept(headers.get(HEADER) if headers is not None else None)


Handler = Callable[..., Awaitable[HTTPResponse]]


def tracked(handler: Handler) -> Handler:
    """``handler`` with its request's id in the log context and in the response."""

    @wraps(handler)
    async def handle(request: Request, *args: Any, **kwargs: Any) -> HTTPResponse:
        rid = request_id_of(request)
        request_id.current.set(rid)
        response = await handler(request, *args, **kwargs)
        response.headers[HEADER] = rid
        return response

    return handle
