"""What goes on the wire: a response's head, bytes for bytes as the Sanic adapter sends it.

The API's headers come first, as they are, then the framing (``content-length``,
``connection``, ``content-type``), as Sanic orders them. Header text that is plain
ASCII without CR, LF or NUL is encoded as it is; anything else has those characters
removed first (a value cannot smuggle a header in), as Sanic does.
"""

from __future__ import annotations

from http import HTTPStatus

from taskhub import HttpResponse

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_UNSAFE = str.maketrans("", "", "\r\n\x00")


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


STATUS_LINES = {status: f"HTTP/1.1 {status} {_reason(status)}\r\n" for status in range(100, 600)}
# The statuses whose answers never carry a body (nor its length and type).
BODILESS = frozenset({*range(100, 200), 204, 304})


def head(response: HttpResponse, keep_alive: bool, body_size: int) -> bytes:
    """The status line and headers of ``response``, with the framing of a ``body_size``
    body (the length of the body as the API made it, even when a HEAD sends none)."""
    status = response.status
    headers = response.headers
    text = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
    lines = len(headers)
    connection = "keep-alive" if keep_alive else "close"
    if status in BODILESS:
        text += f"connection: {connection}\r\n"
    elif response.content_type is None:
        text += f"content-length: {body_size}\r\nconnection: {connection}\r\n"
    else:
        text += (
            f"content-length: {body_size}\r\nconnection: {connection}\r\n"
            f"content-type: {response.content_type}\r\n"
        )
        lines += 1
    lines += 1 if status in BODILESS else 2
    if not (text.isascii() and text.count("\n") == lines == text.count("\r")) or "\x00" in text:
        return _sanitised(response, status, connection, body_size)
    return (STATUS_LINES.get(status) or f"HTTP/1.1 {status} Unknown\r\n").encode() + (
        text + "\r\n"
    ).encode()


def _sanitised(response: HttpResponse, status: int, connection: str, body_size: int) -> bytes:
    """The slow path: CR, LF and NUL dropped from every name and value; a name that is
    still not ASCII raises UnicodeEncodeError, as in Sanic."""
    items = list(response.headers.items())
    if status not in BODILESS:
        items.append(("content-length", str(body_size)))
    items.append(("connection", connection))
    if status not in BODILESS and response.content_type is not None:
        items.append(("content-type", response.content_type))
    out = [(STATUS_LINES.get(status) or f"HTTP/1.1 {status} Unknown\r\n").encode()]
    for name, value in items:
        out.append(name.translate(_UNSAFE).encode("ascii"))
        out.append(b": ")
        out.append(value.translate(_UNSAFE).encode(errors="surrogateescape"))
        out.append(b"\r\n")
    out.append(b"\r\n")
    return b"".join(out)
