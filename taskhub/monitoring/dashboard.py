"""What the dashboard shows: traffic from every server and the queue's state, read at most
once a second however many people watch.

Each viewer polls every second; without a cache, ten open tabs would be ten
snapshots a second. The summary is kept ``ttl`` seconds, and concurrent polls
of a stale summary wait for one refresh instead of each starting their own.

Job rates come from :class:`taskhub.monitoring.snapshot.Rates`, as in ``taskhub status
--watch``: measured against the oldest snapshot of the last ``RATE_BASIS``
seconds, so they follow the workers' reports (every 10 s) rather than averaging
since each worker started.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable

from pydantic import with_config
from typing_extensions import TypedDict

from taskhub.components import QueueBackend
from taskhub.jobs import QueueSnapshot, iso
from taskhub.monitoring.schedules import ScheduleBoard, ScheduleJson
from taskhub.monitoring.snapshot import QueueJson, Rates, queue_json
from taskhub.monitoring.traffic import TrafficJson, TrafficRecorder
from taskhub.store.outage import OutageLog

logger = logging.getLogger(__name__)

CACHE_TTL = 1.0  # seconds one summary serves every viewer
FAILURES = 10  # dead letters listed, newest first
RATE_BASIS = 60.0  # seconds of snapshots kept to measure job rates against


# The one definition of the summary's JSON: the OpenAPI document is made from it.
@with_config(extra="forbid")
class Summary(TypedDict):
    """What the dashboard shows: traffic from every server, the queue's state, and the
    schedules' next runs."""

    taken_at: str | None
    traffic: TrafficJson
    queue: QueueJson
    schedules: list[ScheduleJson]


class Dashboard:
    """The summary the page polls, and the one action it offers (retry a dead letter)."""

    def __init__(
        self,
        traffic: TrafficRecorder,
        queue: QueueBackend,
        *,
        ttl: float = CACHE_TTL,
        failures: int = FAILURES,
        clock: Callable[[], float] = time.monotonic,
        outage: OutageLog | None = None,
        schedules: ScheduleBoard | None = None,
    ) -> None:
        self.traffic = traffic
        self.schedules = schedules
        # Logs an outage once; here, where Redis is read, not where the cache answers.
        self.outage = outage or OutageLog("Redis (dashboard)", logger)
        self.queue = queue
        self.ttl = ttl
        self.failures = failures
        self.clock = clock
        self._cached: Summary | None = None
        self._expires = float("-inf")
        self._lock = asyncio.Lock()
        self._snapshots: deque[tuple[float, QueueSnapshot]] = deque()

    async def summary(self) -> Summary:
        """The cached summary, refreshed once it is ``ttl`` old. Raises BackendUnavailable."""
        if self._cached is not None and self.clock() < self._expires:
            return self._cached
        async with self._lock:
            if self._cached is None or self.clock() >= self._expires:  # nobody refreshed it
                self._cached = await self._read()
                self._expires = self.clock() + self.ttl
            return self._cached

    async def retry(self, job_id: str) -> bool:
        """Queue a dead letter again; False if it is not one (retried already, or expired)."""
        moved = await self.queue.retry_dead([job_id])
        self._cached = None  # the next poll shows the row gone
        return job_id in moved

    async def _read(self) -> Summary:
        traffic, snapshot, schedules = await self.outage.call(
            asyncio.gather(
                self.traffic.read(), self.queue.snapshot(self.failures), self._schedules()
            )
        )
        now = self.clock()
        snapshots = self._snapshots
        while snapshots and now - snapshots[0][0] > RATE_BASIS:
            snapshots.popleft()
        baseline = snapshots[0][1] if snapshots else None
        snapshots.append((now, snapshot))
        return {
            "taken_at": iso(snapshot.taken_at),
            "traffic": traffic.to_json(),
            "queue": queue_json(snapshot, Rates.of(snapshot, baseline)),
            "schedules": schedules,
        }

    async def _schedules(self) -> list[ScheduleJson]:
        return [] if self.schedules is None else await self.schedules.read()
