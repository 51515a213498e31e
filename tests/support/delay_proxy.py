"""A TCP proxy that delays what passes through it: a slow network or a slow Redis, on demand.

Each chunk it reads is forwarded once its delay has passed (drawn from the
direction's range when it arrives), never before an earlier chunk: order is kept,
as on a real connection. When one side closes, what it sent before is still
delivered, then the other side is closed: data already "on the wire" arrives,
as it would over a slow network (so a command whose client gave up may still run).

DelayProxy runs its own event loop in a thread, so a synchronous test can start it,
change its delays while processes and clients use it, and stop it. ProxyProcess runs
one in a process of its own, so that a test's own busy clients (and their hold on the
GIL) never slow the "network" beyond the delay it was given.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from tests.support.processes import free_port

Delay = tuple[float, float]  # seconds: each chunk waits a random time in [low, high]
NO_DELAY: Delay = (0.0, 0.0)
CHUNK = 65536


@dataclass
class Direction:
    """One direction of every connection: its delay, and what went through."""

    delay: Delay = NO_DELAY
    bytes: int = 0
    chunks: int = 0


@dataclass
class DelayProxy:
    """Listens on 127.0.0.1:``port`` and forwards to ``upstream`` with adjustable delays."""

    upstream: tuple[str, int]
    port: int = field(default_factory=free_port)
    to_server: Direction = field(default_factory=Direction)  # client -> upstream
    to_client: Direction = field(default_factory=Direction)  # upstream -> client
    connections: int = 0  # accepted so far
    seed: int = 16

    def __post_init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._pumps: set[asyncio.Task[None]] = set()
        self._random = random.Random(self.seed)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> DelayProxy:
        self._thread.start()
        self._call(self._listen())
        return self

    def delay(self, to_server: Delay = NO_DELAY, to_client: Delay = NO_DELAY) -> None:
        """Delay what is read once this returns, each direction on its own; NO_DELAY ends
        it (what was read before still waits out the delay it was given)."""
        self._call(self._set(to_server, to_client))

    def stop(self) -> None:
        """Close the listener and every connection, then the loop and its thread."""
        if not self._thread.is_alive():
            return
        self._call(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    async def _set(self, to_server: Delay, to_client: Delay) -> None:
        self.to_server.delay, self.to_client.delay = to_server, to_client

    def _call(self, coroutine: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accepted, "127.0.0.1", self.port)

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for pump in list(self._pumps):
            pump.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)

    async def _accepted(
        self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
    ) -> None:
        self.connections += 1
        try:
            server_r, server_w = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_w.close()
            return
        for reader, writer, direction in (
            (client_r, server_w, self.to_server),
            (server_r, client_w, self.to_client),
        ):
            pump = asyncio.create_task(self._pump(reader, writer, direction))
            self._pumps.add(pump)
            pump.add_done_callback(self._pumps.discard)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: Direction
    ) -> None:
        """Read chunks as they come; a second task forwards each when it is due."""
        loop = asyncio.get_running_loop()
        due: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        forward = asyncio.create_task(self._forward(due, writer, direction))
        try:
            last = 0.0
            while True:
                try:
                    data = await reader.read(CHUNK)
                except (ConnectionError, OSError):
                    data = b""
                if not data:
                    break
                low, high = direction.delay
                last = max(last, loop.time() + self._random.uniform(low, high))
                due.put_nowait((last, data))
            due.put_nowait((last, b""))  # the end: close once everything before it is out
            await forward
        finally:
            forward.cancel()
            writer.close()

    @staticmethod
    async def _forward(
        due: asyncio.Queue[tuple[float, bytes]], writer: asyncio.StreamWriter, direction: Direction
    ) -> None:
        loop = asyncio.get_running_loop()
        while True:
            at, data = await due.get()
            wait = at - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                return
            direction.bytes += len(data)
            direction.chunks += 1
            try:
                writer.write(data)
                await writer.drain()
            except (ConnectionError, OSError):
                return


@dataclass(frozen=True)
class Traffic:
    """What went through a proxy so far."""

    connections: int
    to_server: int  # bytes, client -> upstream
    to_client: int  # bytes, upstream -> client


class ProxyProcess:
    """A DelayProxy in a process of its own, told what to do over a pipe."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = free_port()
        context = multiprocessing.get_context("spawn")  # no fork of a threaded pytest
        self._pipe, child = context.Pipe()
        self._process = context.Process(
            target=_serve, args=(upstream, self.port, child), daemon=True
        )

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> ProxyProcess:
        self._process.start()
        assert self._pipe.poll(30) and self._pipe.recv() == "ready", "the proxy did not start"
        return self

    def delay(self, to_server: Delay = NO_DELAY, to_client: Delay = NO_DELAY) -> None:
        """As DelayProxy.delay: applied once this returns."""
        self._ask("delay", to_server, to_client)

    def traffic(self) -> Traffic:
        traffic: Traffic = self._ask("traffic")
        return traffic

    def stop(self) -> None:
        if self._process.is_alive():
            self._ask("stop")
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()

    def _ask(self, *command: Any) -> Any:
        self._pipe.send(command)
        assert self._pipe.poll(10), f"the proxy did not answer {command[0]}"
        return self._pipe.recv()


def _serve(upstream: tuple[str, int], port: int, pipe: Connection) -> None:
    """The proxy process: a DelayProxy, and the parent's commands until "stop"."""
    proxy = DelayProxy(upstream, port).start()
    pipe.send("ready")
    while True:
        name, *args = pipe.recv()
        if name == "delay":
            proxy.delay(*args)
            pipe.send(None)
        elif name == "traffic":
            pipe.send(Traffic(proxy.connections, proxy.to_server.bytes, proxy.to_client.bytes))
        else:
            proxy.stop()
            pipe.send(None)
            return
