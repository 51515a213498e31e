"""An HTTP request and response as taskhub's HTTP API sees them, whatever the server.

A server plugin is an adapter: it turns its framework's request into an
:class:`HttpRequest`, hands it to the API (``context.http.handle``), and writes
the :class:`HttpResponse` back as it is. The API decides every status code,
body and header; the server adds only what framing needs (``Content-Length``,
``Connection``).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

JSON = "application/json"
HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}$")  # an HTTP token


class Headers(Protocol):
    """Request headers, looked up case-insensitively by lower-case name."""

    def get(self, name: str, /) -> str | None: ...


@dataclass(slots=True)
class HttpRequest:
    """One request. ``path`` is as sent (not percent-decoded), without the query string;
    ``client`` is the peer's IP address (``""`` when unknown).

    ``hung_up``, when the server sets it, returns an awaitable that completes once the
    client has gone: a long wait (``GET /task/{id}?wait=N``) stops then. A server that
    cancels the request's task when its client goes (Sanic) need not set it.
    """

    method: str
    path: str
    headers: Headers
    body: bytes = b""
    query: str = ""
    client: str = ""
    hung_up: Callable[[], Awaitable[None]] | None = None


@dataclass(slots=True)
class HttpResponse:
    """One response. ``content_type`` becomes the Content-Type header when there is a body."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str | None = JSON


@dataclass(frozen=True, slots=True)
class ApiOptions:
    """What the API takes from the server's config: the Retry-After of a 503, in seconds,
    how long each ``GET /ready`` check may take, and how many tasks ``POST /tasks`` takes."""

    retry_after: int = 1
    ready_timeout: float = 1.0
    batch_limit: int = 100
