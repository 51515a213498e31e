"""A Sanic response that encodes plain-ASCII headers as they are.

Sanic strips CR, LF and NUL from every header name and value of every response,
which costs more than the rest of a refusal's headers put together. A value
that is printable ASCII has none of those, so only a value that is not goes
through Sanic's own sanitising.
"""

from __future__ import annotations

from collections.abc import Iterator

from sanic.helpers import has_message_body
from sanic.response import HTTPResponse


class FastHeadersResponse(HTTPResponse):
    __slots__ = ()

    @property
    def processed_headers(self) -> Iterator[tuple[bytes, bytes]]:
        if has_message_body(self.status):
            self.headers.setdefault("content-type", self.content_type)
        sanitize = self._sanitize_header_value
        for name, raw in self.headers.items():
            value = raw if isinstance(raw, str) else f"{raw}"
            if name.isascii() and name.isprintable() and value.isascii() and value.isprintable():
                yield name.encode(), value.encode()
            else:
                yield (
                    sanitize(name).encode("ascii"),
                    sanitize(value).encode(errors="surrogateescape"),
                )
