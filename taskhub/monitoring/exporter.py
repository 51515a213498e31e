"""Serving the metrics: the text exposition, queue depth read at scrape time, the worker's port.

With ``PROMETHEUS_MULTIPROC_DIR`` set, prometheus_client keeps each process's
values in files there and a scrape must merge them (``MultiProcessCollector``)
instead of reading this process's default registry; :func:`exposition_registry`
picks accordingly, so every exporter here works in that mode. ``serve --workers
N`` sets it for its children (:func:`multiprocess_dir`). taskhub's own metrics are
counters and histograms, which merge by summing; queue depth, the one gauge, is
read from Redis at scrape time by whichever process answers, not kept in files.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from taskhub.errors import StartupError
from taskhub.store.outage import OutageLog
from taskhub.store.unavailable import is_unavailable

if TYPE_CHECKING:
    from taskhub.components import QueueBackend

logger = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST


def exposition_registry() -> CollectorRegistry:
    """This process's registry, or one merging every process's files in multiprocess mode."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]  # untyped upstream
        return registry
    return REGISTRY


@contextlib.contextmanager
def multiprocess_dir() -> Iterator[Path]:
    """A private, empty directory for one group of processes' metric files, removed after:
    files left by an earlier run would be summed into this one's values."""
    path = Path(tempfile.mkdtemp(prefix="taskhub-metrics-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def process_dead(directory: Path, pid: int) -> None:
    """Forget a dead process's live gauges; its counters stay, so totals never drop."""
    mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]  # untyped upstream


class QueueDepth(Collector):
    """Jobs by state, read from the queue's store when scraped.

    ``collect`` is synchronous and the store is async, so a scrape first awaits
    :meth:`refresh` (bounded by ``timeout``); when the store does not answer in
    time the gauge is left out of that scrape rather than failing it.
    """

    def __init__(self, queue: QueueBackend, timeout: float) -> None:
        self.queue = queue
        self.timeout = timeout
        self._depth: dict[str, int] = {}
        self._outage = OutageLog("Redis (queue depth for /metrics)", logger)

    async def refresh(self) -> None:
        try:
            self._depth = await asyncio.wait_for(self.queue.depth(), self.timeout)
        except Exception as exc:  # down or slow: skip it this scrape
            self._depth = {}
            if is_unavailable(exc):
                self._outage.absorb(exc)  # logged once per outage
            else:
                logger.debug("queue depth not read for this scrape: %r", exc)
            return
        self._outage.succeeded()

    def collect(self) -> Iterator[Metric]:
        if not self._depth:
            return
        gauge = GaugeMetricFamily(
            "taskhub_queue_jobs", "Jobs in the queue by state, read at scrape", labels=["state"]
        )
        for state, count in self._depth.items():
            gauge.add_metric([state], count)
        yield gauge


async def render(depth: QueueDepth | None) -> bytes:
    """The whole text exposition for one scrape."""
    registry = exposition_registry()
    if registry is REGISTRY:
        body = generate_latest(registry)
    else:  # reads every process's files: not in the event loop
        body = await asyncio.to_thread(generate_latest, registry)
    if depth is not None:
        await depth.refresh()
        registry = CollectorRegistry(auto_describe=False)
        registry.register(depth)
        body += generate_latest(registry)
    return body


class WorkerExporter:
    """``/metrics`` on its own port for a worker without an HTTP server (a thread)."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def start(self) -> None:
        try:
            self._server, self._thread = start_http_server(
                self.port, self.host, registry=exposition_registry()
            )
        except OSError as exc:
            message = (
                f"metrics: cannot listen on {self.host}:{self.port}: {exc.strerror or exc} "
                "(each worker on a host needs its own metrics.worker_port or --metrics-port; "
                "0 picks a free one)"
            )
            raise StartupError(message) from exc
        self.port = self._server.server_port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
