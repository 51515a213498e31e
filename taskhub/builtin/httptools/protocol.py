"""One HTTP/1.1 connection: llhttp (through httptools) parses, the API answers, in order.

A connection answers one request at a time in its one task; requests that arrive
meanwhile (pipelined) wait in a queue, and reading pauses until they are answered, as
does answering while the client does not read. Whatever is refused before the API (a head
over ``header_limit``, a body over ``body_limit``, bytes that are not HTTP, a request
that does not arrive in time) is answered by the API's ``error`` in its turn, after
which the connection reads nothing more: it half-closes, discards what still comes for
a moment so that the client reads the answer rather than a reset, and closes.

Timeouts cost nothing per request: a connection stores a deadline read from the
server's coarse clock (:class:`Shared`), and the server's sweep closes the ones past it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import cast

from httptools import (
    HttpParserCallbackError,
    HttpParserError,
    HttpParserInvalidURLError,
    HttpParserUpgrade,
    HttpRequestParser,
    parse_url,
)

from taskhub import HttpHandler, HttpRequest, HttpResponse
from taskhub.builtin.httptools.wire import BODILESS, CONTINUE, head

logger = logging.getLogger(__name__)

# How long a refused connection keeps discarding what the client still sends, so that
# the client reads the answer instead of a reset, in seconds.
LINGER = 2.0
METHODS = {m.encode(): m for m in ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS")}
# Larger bodies go to the transport beside their head rather than copied after it.
COPY_LIMIT = 16_384


@dataclass(frozen=True, slots=True)
class Limits:
    """The server's options, as each connection reads them."""

    body_limit: int
    header_limit: int
    request_timeout: float
    keep_alive_timeout: float


@dataclass(eq=False, slots=True)
class Shared:
    """What a server's connections share: the API, the limits, the coarse clock that
    deadlines are read from, and the connections themselves (for the sweep and stop)."""

    api: HttpHandler
    limits: Limits
    now: float
    connections: set[HttpConnection] = field(default_factory=set)
    draining: bool = False
    drained: asyncio.Event = field(default_factory=asyncio.Event)

    def forget(self, connection: HttpConnection) -> None:
        self.connections.discard(connection)
        if self.draining and not self.connections:
            self.drained.set()


class Refusal(Exception):
    """Raised in a parser callback: answer ``status`` (0: none) and read nothing more."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


# A request read and not yet answered: the request (None when refused before its head
# was whole), the status it is refused with (0: the API answers it), and keep-alive.
Exchange = tuple[HttpRequest | None, int, bool]


class HttpConnection(asyncio.Protocol):
    """The parser's callbacks fill in a request; a task answers the requests in order."""

    __slots__ = (
        "blocked",
        "body",
        "body_size",
        "busy",
        "client",
        "closing",
        "deadline",
        "gone",
        "head_seen",
        "head_size",
        "headers",
        "in_head",
        "lingering",
        "lost",
        "parser",
        "parsing",
        "paused",
        "queue",
        "request",
        "runner",
        "shared",
        "transport",
        "url",
        "waiter",
    )

    def __init__(self, shared: Shared) -> None:
        self.shared = shared
        self.parser = HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.client = ""
        self.deadline = 0.0
        # The request being read.
        self.parsing = False  # between its first byte and its last
        self.in_head = False  # ... and before the end of its head
        self.url = b""
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.body_size = 0
        self.head_size = 0  # bytes of its request line and headers, counted as parsed
        self.head_seen = 0  # bytes received while its head was incomplete
        self.request: HttpRequest | None = None  # once its head is whole
        # Answering.
        self.busy = False  # the connection's task has requests to answer
        self.queue: deque[Exchange] = deque()  # read and not yet answered, in order
        self.runner: asyncio.Task[None] | None = None  # the connection's task
        self.waiter: asyncio.Future[None] | None = None  # its wait for the next request
        self.gone: asyncio.Future[None] | None = None  # done once the client hangs up
        self.paused = False  # reading paused until the queue is answered
        self.blocked: asyncio.Future[None] | None = None  # the client reads too slowly
        self.closing = False  # read nothing more; close once the queue is answered
        self.lingering = False  # refused: discard input until the deadline, then close
        self.lost = False

    # ------------------------------------------------------------------ transport events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.client = peer[0] if isinstance(peer, tuple) else ""
        shared = self.shared
        shared.connections.add(self)
        self.deadline = shared.now + shared.limits.request_timeout
        if shared.draining:  # accepted just before the listener closed
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.transport = None
        for future in (self.blocked, self.waiter, self.gone):
            if future is not None and not future.done():
                future.set_result(None)
        if not self.busy:  # else the task forgets it once its request is done
            self.shared.forget(self)

    def hung_up(self) -> Awaitable[None]:
        """Done once the client has gone (see :attr:`HttpRequest.hung_up`): requests run
        to the end otherwise, so only a long wait asks."""
        gone = self.gone
        if gone is None:
            gone = self.gone = asyncio.get_running_loop().create_future()
            if self.lost:
                gone.set_result(None)
        return asyncio.shield(gone)  # a waiter that stops cancels its own, not this one

    def pause_writing(self) -> None:
        if self.blocked is None:
            self.blocked = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        blocked, self.blocked = self.blocked, None
        if blocked is not None and not blocked.done():
            blocked.set_result(None)

    def eof_received(self) -> bool:
        """The client closed its end: it has hung up (a half-close that still waits for
        answers is rare in HTTP, and Sanic takes it so too). Requests being answered
        still run to the end, so that what they stored is whole; the answers are dropped."""
        return False

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        if self.in_head:  # a head arriving in pieces: bound what httptools buffers
            self.head_seen += len(data)
            if self.head_seen > self.shared.limits.header_limit:
                self.refuse(431)
                return
        try:
            self.parser.feed_data(data)
        except HttpParserCallbackError as exc:
            reason = exc.__context__
            if isinstance(reason, Refusal):
                self.refuse(reason.status)
            else:
                logger.error("error while reading a request", exc_info=reason or exc)
                self.refuse(500)
        except HttpParserUpgrade:
            # A protocol switch (or CONNECT) is not served: answer the request as any
            # other, and read nothing of what follows it.
            self.closing = True
        except HttpParserError:
            self.refuse(400)

    # ------------------------------------------------------------------ parser callbacks

    def on_message_begin(self) -> None:
        if self.closing:
            raise Refusal(0)
        self.parsing = self.in_head = True
        self.url = b""
        self.headers = {}
        self.body = []
        self.body_size = self.head_size = self.head_seen = 0
        self.request = None
        self.deadline = self.shared.now + self.shared.limits.request_timeout

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.head_size += len(url)
        if self.head_size > self.shared.limits.header_limit:
            raise Refusal(431)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.in_head:  # a trailer after a chunked body: not part of the request
            return
        self.head_size += len(name) + len(value) + 4
        if self.head_size > self.shared.limits.header_limit:
            raise Refusal(431)
        key = name.decode("latin-1").lower()
        if key not in self.headers:  # the first of repeated headers, as Sanic's get()
            # llhttp passes a value's trailing blanks on; a field value has none (RFC 9110)
            self.headers[key] = value.rstrip(b" \t").decode(errors="surrogateescape")

    def on_headers_complete(self) -> None:
        self.in_head = False
        raw = self.parser.get_method()
        method = METHODS.get(raw) or raw.decode("latin-1")
        url = self.url
        if url[:1] == b"/" and b"#" not in url:
            path, _, query = url.partition(b"?")
        else:  # absolute-form, a fragment, or "*"
            try:
                parsed = parse_url(url)
            except HttpParserInvalidURLError:
                raise Refusal(400) from None
            path, query = parsed.path or b"/", parsed.query or b""
        headers = self.headers
        self.request = HttpRequest(
            method,
            path.decode("latin-1"),
            headers,
            b"",
            query.decode("latin-1"),
            self.client,
            self.hung_up,
        )
        length = headers.get("content-length")
        if length is not None and int(length) > self.shared.limits.body_limit:
            raise Refusal(413)  # refused before reading a byte of the body
        expect = headers.get("expect")
        if expect is not None:
            if expect.lower() != "100-continue":
                raise Refusal(417)
            # Not when a response is still due before this one: it would come first.
            if not self.busy and self.parser.get_http_version() == "1.1":
                assert self.transport is not None
                self.transport.write(CONTINUE)

    def on_body(self, body: bytes) -> None:
        self.body_size += len(body)
        if self.body_size > self.shared.limits.body_limit:
            raise Refusal(413)  # a chunked body, once it passes the limit
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.parsing = False
        request = self.request
        assert request is not None
        body = self.body
        if body:
            request.body = body[0] if len(body) == 1 else b"".join(body)
        keep_alive = self.parser.should_keep_alive() and self.shared.limits.keep_alive_timeout > 0
        if not keep_alive:
            self.closing = True  # nothing after this request is read
        self.queue.append((request, 0, keep_alive))
        if not self.busy:
            self.busy = True
            self.wake()
        elif not self.paused and self.transport is not None:
            self.transport.pause_reading()
            self.paused = True

    # ------------------------------------------------------------------ answering

    def refuse(self, status: int) -> None:
        """Refuse the request being read with ``status`` in its turn; read nothing more."""
        self.closing = True
        self.parsing = self.in_head = False
        if status == 0:
            return
        if self.busy:
            self.queue.append((self.request, status, False))
        else:
            self.answer_refusal(self.request, status)

    def answer_refusal(self, request: HttpRequest | None, status: int) -> None:
        """The API's answer to a refusal, then a half-close and a short linger."""
        transport = self.transport
        if transport is None:
            return
        self.send(self.shared.api.error(status, request), keep_alive=False, head_only=False)
        if transport.can_write_eof():
            transport.write_eof()
        if self.paused:
            transport.resume_reading()  # to see the client close, and discard the rest
            self.paused = False
        self.lingering = True
        self.deadline = self.shared.now + LINGER

    def send(self, response: HttpResponse, *, keep_alive: bool, head_only: bool) -> None:
        transport = self.transport
        assert transport is not None
        body = response.body
        data = head(response, keep_alive, len(body))
        if head_only or not body or response.status in BODILESS:
            transport.write(data)
        elif len(body) <= COPY_LIMIT:
            transport.write(data + body)
        else:
            transport.writelines((data, body))

    def wake(self) -> None:
        """Have the connection's task answer what is queued (starting it the first time)."""
        if self.runner is None:
            self.runner = asyncio.get_running_loop().create_task(self.run())
        elif self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def run(self) -> None:
        """The connection's task: answer the queue in order, then wait for more, until
        the connection closes. One task for every request of a connection, not one each."""
        try:
            while True:
                while self.queue:
                    if not await self.answer(self.queue.popleft()):
                        return
                self.busy = False
                if not self.idle():
                    return
                self.waiter = asyncio.get_running_loop().create_future()
                await self.waiter
                if self.lost:
                    return
        finally:
            self.busy = False
            self.queue.clear()
            self.runner = self.waiter = None
            if self.lost:
                self.shared.forget(self)

    async def answer(self, exchange: Exchange) -> bool:
        """Answer one request; False when the connection takes no more."""
        api = self.shared.api
        request, refusal, keep_alive = exchange
        if refusal:
            self.answer_refusal(request, refusal)
            return False
        assert request is not None
        try:
            response = await api.handle(request)
        except Exception:  # the API never raises; if it did, the client gets a 500
            logger.exception("the API raised on %s %s", request.method, request.path)
            response = api.error(500, request)
        if self.lost:
            logger.info("client hung up before the answer to %s %s", request.method, request.path)
            return False
        last = not keep_alive or (
            not self.queue and (self.closing or (self.shared.draining and not self.parsing))
        )
        try:
            self.send(response, keep_alive=not last, head_only=request.method == "HEAD")
        except UnicodeEncodeError:  # a header name the API should never make
            logger.exception("unencodable header in the answer to %s", request.path)
            self.send(api.error(500, request), keep_alive=not last, head_only=False)
        if last:
            assert self.transport is not None
            self.transport.close()
            return False
        return await self.writable()

    async def writable(self) -> bool:
        """Wait while the client reads slowly (answer no faster); False once it is gone."""
        if self.blocked is not None:
            await self.blocked
        return not self.lost

    def idle(self) -> bool:
        """After the answers: wait for the next request (True), or close when nothing
        more comes."""
        transport = self.transport
        if transport is None or transport.is_closing() or self.lingering:
            return False
        shared = self.shared
        if self.closing or (shared.draining and not self.parsing):
            transport.close()
            return False
        if not self.parsing:
            self.deadline = shared.now + shared.limits.keep_alive_timeout
        if self.paused:
            self.paused = False
            transport.resume_reading()
        return True

    def expire(self) -> None:
        """Past the deadline: a request that has not arrived gets 408; else close."""
        transport = self.transport
        if transport is None or self.busy:
            return
        if self.parsing:
            self.refuse(408)
        else:
            transport.close()

    def drain(self) -> None:
        """The server stops: close now if idle; else close once the answers are sent."""
        if self.transport is not None and not self.busy and not self.parsing:
            self.transport.close()
