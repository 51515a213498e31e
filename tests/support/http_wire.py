"""HTTP/1.1 on a raw socket, for tests of framing that an HTTP client library hides:
pipelining, interim 100 answers, half-sent requests, a server closing the connection."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import orjson


@dataclass
class Answer:
    """One response as it came: status, headers by lower-case name, body."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict[str, object]:
        return orjson.loads(self.body)


@dataclass
class Wire:
    """A connection to a server that reads responses one at a time, in order."""

    sock: socket.socket
    pending: bytes = b""
    head_only: list[bool] = field(default_factory=list)  # HEAD answers have no body

    @classmethod
    def open(cls, url: str, timeout: float = 10) -> Wire:
        parts = urlsplit(url)
        return cls(socket.create_connection((parts.hostname, parts.port), timeout=timeout))

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        try:
            chunk = self.sock.recv(65_536)
        except ConnectionResetError:
            chunk = b""
        self.pending += chunk
        return bool(chunk)

    def read(self) -> Answer:
        """The next response, interim (1xx) ones included; AssertionError if the server
        closes the connection before a whole one came."""
        while b"\r\n\r\n" not in self.pending:
            assert self._fill(), f"connection closed before a response; got {self.pending!r}"
        head, _, self.pending = self.pending.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers: dict[str, str] = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        status = int(status_line.split()[1])
        length = int(headers.get("content-length", "0"))
        while len(self.pending) < length:
            assert self._fill(), "connection closed in the middle of a body"
        body, self.pending = self.pending[:length], self.pending[length:]
        return Answer(status, headers, body)

    def closed(self) -> bool:
        """True when the server closes the connection (EOF or reset) with nothing more to
        read; False if more bytes arrive; socket.timeout if it stays open and silent."""
        if self.pending:
            return False
        return not self._fill()

    def close(self) -> None:
        self.sock.close()


def request(
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    version: str = "1.1",
) -> bytes:
    """One request's bytes; Content-Length is added for a body unless given."""
    fields = {"Host": "test", **(headers or {})}
    framed = {name.lower() for name in fields} & {"content-length", "transfer-encoding"}
    if body is not None and not framed:
        fields["Content-Length"] = str(len(body))
    head = f"{method} {path} HTTP/{version}\r\n" + "".join(
        f"{name}: {value}\r\n" for name, value in fields.items()
    )
    return head.encode() + b"\r\n" + (body or b"")


def chunked(body: bytes, size: int) -> bytes:
    """``body`` in chunked transfer coding, ``size`` bytes a chunk, with the last chunk."""
    parts = [
        b"%x\r\n%b\r\n" % (len(body[i : i + size]), body[i : i + size])
        for i in range(0, len(body), size)
    ]
    return b"".join(parts) + b"0\r\n\r\n"
