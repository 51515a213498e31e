"""A pipelined Redis connection for the admission script: the request path's one round trip.

Script calls leave in batches, one write each, and their replies are read off
one stream in order (Redis answers in the order it was asked). A batch leaves
at the end of the event-loop turn that made it, or, while the previous batch
is still in flight, as soon as that batch's replies are in: under load, N
admissions cost one send and one receive instead of N of each, with no
connection-pool checkout, task or timeout object per request.
redis-py still serves everything else; this covers only ``EVALSHA``.

A call that fails on the connection (reset, timeout) fails every call in
flight on it with redis-py's ConnectionError or TimeoutError, which the callers
already read as "Redis is unavailable"; the next call reconnects. Like any
request whose reply was lost, such a call may or may not have run.

Through Redis Sentinel, every connect first asks the sentinels where the master
is, then checks with ``ROLE`` that the server reached is it; a switch the
sentinels announce, or a READONLY reply (the server was demoted under us), drops
the connection, so the next call asks again and finds the promoted replica
without a restart.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import socket
from collections import deque
from collections.abc import Sequence
from typing import Any, Protocol, cast

import hiredis
from redis.exceptions import AuthenticationError, InvalidResponse, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from taskhub.store.connection import ConnectionSettings
from taskhub.store.sentinel import MasterLocator
from taskhub.store.urls import Address

logger = logging.getLogger(__name__)

Arg = str | bytes | int


class ScriptRunner(Protocol):
    """What runs a Lua script: redis-py's registered Script or a PipelinedScript."""

    async def __call__(self, keys: Sequence[Any], args: Sequence[Any]) -> Any: ...


ScriptCall = tuple[Sequence[Arg], Sequence[Arg]]  # one call's keys and args


class BatchScriptRunner(ScriptRunner, Protocol):
    """A script runner that also sends many calls in one round trip (per Redis node)."""

    async def many(self, calls: Sequence[ScriptCall]) -> list[Any]:
        """Each call's reply, in order. A call that failed (an error reply, a connection
        lost or not made) has its exception in its place instead: never raised."""
        ...


def encode_command(args: Sequence[Arg]) -> bytes:
    """One command in RESP, an array of bulk strings, encoded by hiredis in C (a third of
    the time a Python loop takes: 0.8 against 2.5 us for an admission's EVALSHA)."""
    packed: bytes = hiredis.pack_command(tuple(args))  # type: ignore[arg-type]  # stub: 1-tuple
    return packed


class _ReplyStream(asyncio.Protocol):
    """One connection: writes batches of commands, hands each reply to its call in order.

    While a batch is in flight, new commands wait and leave together as the next
    batch once its replies are in: the busier the server, the larger the batches,
    and one write and one read serve them all.
    """

    def __init__(self, timeout: float) -> None:
        self.reader = hiredis.Reader(protocolError=InvalidResponse, replyError=ResponseError)
        self.timeout = timeout
        self.waiting: deque[asyncio.Future[Any]] = deque()  # sent, in order
        # Not sent yet; kept per connection so that a call made before a reconnect
        # can never be written to the new connection.
        self.unsent: list[bytes] = []
        self.unsent_futures: list[asyncio.Future[Any]] = []
        self.flush_scheduled = False
        self.transport: asyncio.Transport | None = None
        self.address: Address | None = None  # the server's, as connected to
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def send(self, command: bytes, future: asyncio.Future[Any]) -> None:
        self.unsent.append(command)
        self.unsent_futures.append(future)
        if not self.waiting and not self.flush_scheduled:
            self.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self.flush_scheduled = False
        if not self.unsent:
            return
        if self.lost or self.transport is None:
            self.fail(RedisConnectionError("connection to Redis lost"))
            return
        self.transport.write(b"".join(self.unsent))
        self.waiting.extend(self.unsent_futures)
        last = self.unsent_futures[-1]
        self.unsent, self.unsent_futures = [], []
        asyncio.get_running_loop().call_later(self.timeout, self._expire, last)

    def _expire(self, future: asyncio.Future[Any]) -> None:
        if not future.done() and not self.lost:
            self.fail(RedisTimeoutError(f"Redis did not answer within {self.timeout:g} s"))

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while True:
            try:
                reply = self.reader.gets()
            except InvalidResponse as exc:
                self.fail(RedisConnectionError(f"protocol error from Redis: {exc}"))
                return
            if reply is False:
                break
            future = self.waiting.popleft()
            if future.done():  # its caller was cancelled; the reply is nobody's
                continue
            if isinstance(reply, ResponseError):
                future.set_exception(reply)
            else:
                future.set_result(reply)
        if not self.waiting and self.unsent and not self.flush_scheduled:
            self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        reason = f": {exc}" if exc else ""
        self._fail_waiting(RedisConnectionError(f"connection to Redis lost{reason}"))

    def fail(self, error: Exception) -> None:
        """Drop the connection, failing every call waiting on it with ``error``."""
        self.lost = True
        self._fail_waiting(error)
        if self.transport is not None:
            self.transport.abort()

    def _fail_waiting(self, error: Exception) -> None:
        self.waiting.extend(self.unsent_futures)
        self.unsent, self.unsent_futures = [], []
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(error)


class RedisPipeline:
    """One connection that batches the calls of each event-loop turn into one write."""

    def __init__(self, connection: ConnectionSettings) -> None:
        self.connection = connection
        self._stream: _ReplyStream | None = None
        self._connecting: asyncio.Future[_ReplyStream] | None = None  # the attempt under way
        self._scripts: dict[str, str] = {}  # loaded on every new connection
        self._locator: MasterLocator | None = None
        if connection.sentinels is not None:
            self._locator = MasterLocator(connection, on_switch=self._switched)

    @property
    def server_name(self) -> str:
        """The connection's name and, for a master the sentinels named, where it was
        found: "the master of 'svc' at 10.0.0.5:6379"."""
        stream = self._stream
        if self._locator is None or stream is None or stream.address is None:
            return self.connection.name
        host, port = stream.address
        return f"{self.connection.name} at {host}:{port}"

    def script(self, source: str) -> PipelinedScript:
        script = PipelinedScript(self, source)
        self._scripts[script.sha] = source
        return script

    async def call(self, *args: Arg) -> Any:
        """Send one command with the others of its batch; its reply (an error reply raises)."""
        stream = self._stream
        if stream is None or stream.lost:
            stream = await self._connected()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        stream.send(encode_command(args), future)
        try:
            return await future
        except ResponseError as exc:
            if self._locator is None or not str(exc).startswith("READONLY "):
                raise
            # Demoted by a failover: ask the sentinels again on the next call.
            stream.fail(RedisConnectionError(f"Redis is a replica now: {exc}"))
            raise RedisConnectionError(f"Redis is a replica now: {exc}") from None

    async def call_many(self, commands: Sequence[Sequence[Arg]]) -> list[Any]:
        """Send ``commands`` back to back in one write; their replies in order.

        A command that failed (an error reply, a lost connection) has its exception in
        its place: the others' replies are not lost with it.
        """
        try:
            stream = self._stream
            if stream is None or stream.lost:
                stream = await self._connected()
        except (RedisConnectionError, RedisTimeoutError) as exc:
            return [exc] * len(commands)
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Any]] = []
        for args in commands:  # no await in between: they all leave in the same write
            future: asyncio.Future[Any] = loop.create_future()
            stream.send(encode_command(args), future)
            futures.append(future)
        replies: list[Any] = await asyncio.gather(*futures, return_exceptions=True)
        if self._locator is not None and any(_readonly(reply) for reply in replies):
            # Demoted by a failover: ask the sentinels again on the next call.
            stream.fail(RedisConnectionError("Redis is a replica now"))
            replies = [
                RedisConnectionError(f"Redis is a replica now: {r}") if _readonly(r) else r
                for r in replies
            ]
        return replies

    def _switched(self, master: Address) -> None:
        """The sentinels named a new master: leave the old one now, even if it still
        answers (what it takes until its demotion it loses)."""
        if self._stream is not None and self._stream.address != master:
            self._stream.fail(RedisConnectionError("the sentinels switched to a new master"))

    async def ping(self) -> None:
        """PING on this connection: readiness asks the very connection admissions use."""
        await self.call("PING")

    async def call_asking(self, *args: Arg) -> Any:
        """``ASKING`` then the command, back to back on the connection (a Redis Cluster
        node serves a slot it is importing only to the command right after ASKING)."""
        stream = await self._connected()
        loop = asyncio.get_running_loop()
        asking: asyncio.Future[Any] = loop.create_future()
        future: asyncio.Future[Any] = loop.create_future()
        stream.send(encode_command(("ASKING",)), asking)
        stream.send(encode_command(args), future)
        await asking
        return await future

    async def _connected(self) -> _ReplyStream:
        stream = self._stream
        if stream is None or stream.lost:
            stream = await self._connect()
            if stream.lost:  # killed between its handshake and now
                raise RedisConnectionError("connection to Redis lost")
        return stream

    async def _connect(self) -> _ReplyStream:
        """One attempt at a time, shared by every caller waiting for it: when Redis cannot
        be reached (a dead host eats SYNs), they all fail together after one connect
        timeout, instead of each trying in turn behind a lock, the last after N of them."""
        if self._stream is not None and not self._stream.lost:
            return self._stream
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.ensure_future(self._attempt())
            self._connecting.add_done_callback(_retrieved)
        return await asyncio.shield(self._connecting)

    async def _attempt(self) -> _ReplyStream:
        try:
            stream = await asyncio.wait_for(self._open(), self.connection.connect_timeout)
        except TimeoutError:
            raise RedisTimeoutError("timed out connecting to Redis") from None
        except OSError as exc:
            raise RedisConnectionError(f"cannot connect to Redis: {exc}") from exc
        self._stream = stream
        return stream

    async def _open(self) -> _ReplyStream:
        connection = self.connection
        if self._locator is not None:  # the master's address is the sentinels' to give
            connection = connection.at(await self._locator.master())
        loop = asyncio.get_running_loop()
        transport: asyncio.BaseTransport

        def new_stream() -> _ReplyStream:
            return _ReplyStream(connection.socket_timeout)

        if connection.path is not None:
            transport, stream = await loop.create_unix_connection(new_stream, connection.path)
        else:
            tls = connection.tls.ssl_context if connection.tls is not None else None
            host, port = connection.address
            transport, stream = await loop.create_connection(new_stream, host, port, ssl=tls)
            sock = transport.get_extra_info("socket")
            if connection.keepalive and sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        stream.transport = transport
        stream.address = connection.address
        try:
            await self._handshake(stream, connection.name)
        except BaseException:
            transport.abort()
            raise
        return stream

    async def _handshake(self, stream: _ReplyStream, name: str) -> None:
        """AUTH and SELECT, as redis-py does for the URL, ROLE when the sentinels named
        the server, and SCRIPT LOAD, before any call.

        Loading the scripts here means a restarted Redis costs no NOSCRIPT round trip.
        """
        connection = self.connection
        commands: list[tuple[Arg, ...]] = []
        if connection.password is not None:
            user, password = connection.username, connection.password
            commands.append(("AUTH", user, password) if user else ("AUTH", password))
        if connection.db:
            commands.append(("SELECT", connection.db))
        if self._locator is not None:
            commands.append(("ROLE",))
        commands += [("SCRIPT", "LOAD", source) for source in self._scripts.values()]
        assert stream.transport is not None
        loop = asyncio.get_running_loop()
        for command in commands:
            if stream.lost:
                raise RedisConnectionError("connection to Redis lost while connecting")
            future: asyncio.Future[Any] = loop.create_future()
            stream.send(encode_command(command), future)
            try:
                reply = await future
            except ResponseError as exc:  # as redis-py: a refused login means "unavailable"
                if command[0] != "AUTH":
                    raise
                raise AuthenticationError(f"Redis refused AUTH: {exc}") from None
            if command[0] == "ROLE" and reply[0] != b"master":
                # A sentinel's view lags a switch: it may name a demoted master a moment.
                role = reply[0].decode()
                raise RedisConnectionError(f"{name}, named master by the sentinels, is a {role}")

    async def close(self) -> None:
        """Close the connection; calls still waiting on it fail as "connection lost"."""
        stream, self._stream = self._stream, None
        if self._connecting is not None:
            self._connecting.cancel()
        if stream is not None and stream.transport is not None:
            stream.transport.close()
            await asyncio.sleep(0)  # let the transport call connection_lost
        if self._locator is not None:
            await self._locator.close()


def _retrieved(attempt: asyncio.Future[_ReplyStream]) -> None:
    """Its callers saw the failure, or gave up waiting; either way it is not news."""
    if not attempt.cancelled():
        attempt.exception()


class PipelinedScript:
    """A Lua script run with EVALSHA on a pipeline, loaded again when Redis has lost it."""

    def __init__(self, pipeline: RedisPipeline, source: str) -> None:
        self.pipeline = pipeline
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        command = ("EVALSHA", self.sha, len(keys), *keys, *args)
        try:
            return await self.pipeline.call(*command)
        except ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        # NOSCRIPT: the call did not run. Someone flushed Redis's script cache (a restart
        # is covered by the load on connect).
        logger.debug("Redis had no copy of script %s: loading it", self.sha)
        await self.pipeline.call("SCRIPT", "LOAD", self.source)
        return await self.pipeline.call(*command)

    async def many(self, calls: Sequence[ScriptCall]) -> list[Any]:
        """Every call as EVALSHA in one write, replies in order (see BatchScriptRunner)."""
        commands = [("EVALSHA", self.sha, len(keys), *keys, *args) for keys, args in calls]
        replies = await self.pipeline.call_many(commands)
        lost = [i for i, reply in enumerate(replies) if _noscript(reply)]
        if not lost:
            return replies
        # Redis lost the script (SCRIPT FLUSH): those calls did not run; run them again.
        logger.debug("Redis had no copy of script %s: loading it", self.sha)
        try:
            await self.pipeline.call("SCRIPT", "LOAD", self.source)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            for index in lost:
                replies[index] = exc
            return replies
        again = await self.pipeline.call_many([commands[i] for i in lost])
        for index, reply in zip(lost, again, strict=True):
            replies[index] = reply
        return replies


def _readonly(reply: Any) -> bool:
    return isinstance(reply, ResponseError) and str(reply).startswith("READONLY ")


def _noscript(reply: Any) -> bool:
    return isinstance(reply, ResponseError) and str(reply).startswith("NOSCRIPT")
