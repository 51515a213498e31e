"""A TCP proxy that loses answers on demand: the request reaches the server, which acts
on it and answers; the proxy reads that answer and closes the client's connection
instead of relaying it. The client sees a dropped connection after the server did the
work: the case an Idempotency-Key is for.

It runs its own event loop in a thread (as tests/support/delay_proxy.py's DelayProxy),
so a synchronous test can arm it, use it and stop it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from tests.support.processes import free_port

CHUNK = 65536


@dataclass
class DropProxy:
    """Listens on 127.0.0.1:``port``, forwards to ``upstream``; drops the next ``drop(n)``
    answers (each after its first bytes came back from the server)."""

    upstream: tuple[str, int]
    port: int = field(default_factory=free_port)
    dropped: int = 0  # answers lost so far
    relayed: int = 0  # answers (first chunks) passed on so far
    _to_drop: int = 0

    def __post_init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> DropProxy:
        self._thread.start()
        self._call(self._listen())
        return self

    def drop(self, answers: int) -> None:
        """Lose the next ``answers`` answers, on whichever connections they come."""
        self._call(self._arm(answers))

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def _call(self, coroutine: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)

    async def _arm(self, answers: int) -> None:
        self._to_drop = answers

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accepted, "127.0.0.1", self.port)

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accepted(
        self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
    ) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_w.close()
            return
        self._spawn(self._requests(client_r, server_w))
        self._spawn(self._answers(server_r, client_w, server_w))

    async def _requests(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(CHUNK):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _answers(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        upstream: asyncio.StreamWriter,
    ) -> None:
        """Relay the server's bytes; when armed, the next answer closes both sides instead."""
        try:
            while data := await reader.read(CHUNK):
                if self._to_drop > 0:
                    self._to_drop -= 1
                    self.dropped += 1
                    writer.transport.abort()  # the client sees the connection reset
                    upstream.close()
                    return
                self.relayed += 1
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
