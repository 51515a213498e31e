"""The supervised process's side of ``taskhub serve --workers N``.

A child gets two inherited descriptors: the listening socket its supervisor bound,
and its end of a socketpair (the *link*). Once it serves, it writes :data:`READY`
on the link; the supervisor never writes, so reading EOF means the supervisor is
gone (even by SIGKILL), and the child then shuts down as on SIGTERM instead of
serving on, orphaned, on a port nobody supervises.
"""

from __future__ import annotations

import asyncio
import logging
import socket

logger = logging.getLogger(__name__)

READY = b"R"


class SupervisorLink:
    """The child's end of the link."""

    def __init__(self, fd: int) -> None:
        self.sock = socket.socket(fileno=fd)
        self.sock.setblocking(False)

    def started(self, stop: asyncio.Event) -> None:
        """Tell the supervisor this process serves; stop when the supervisor goes away."""
        try:
            self.sock.send(READY)
        except OSError:  # it closed the link while this process was starting
            self._closed(stop)
            return
        loop = asyncio.get_running_loop()
        loop.add_reader(self.sock.fileno(), self._readable, loop, stop)

    def _readable(self, loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
        try:
            data = self.sock.recv(64)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(self.sock.fileno())
            self._closed(stop)

    def _closed(self, stop: asyncio.Event) -> None:
        if not stop.is_set():
            logger.info("the supervisor closed the link (it stops, or it is gone): shutting down")
            stop.set()
