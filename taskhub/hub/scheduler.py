"""The worker's scheduler: wakes at each schedule's next tick and queues it.

Every worker process runs one (``taskhub worker``, ``taskhub run``); they race for
each tick and the tick's script (:mod:`taskhub.limits.schedules`) lets exactly one
win. A process that starts late, after a tick no one queued, queues that tick if it
is at most ``max_lateness`` late, and only the latest one: never a backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence

from taskhub.config.schedules import ScheduleSettings
from taskhub.errors import BackendUnavailable
from taskhub.limits.policy import Outcome
from taskhub.limits.schedules import TickSubmitter, tick_job_id

logger = logging.getLogger(__name__)

RETRY = 1.0  # seconds before a tick refused (queue full, Redis down) is tried again
LONGEST_SLEEP = 60.0  # re-read the clock at least this often (it may have been set)
AFTER_TICK = 0.005  # wake just after a tick, so that the clock has reached it


class Scheduler:
    """Queues each schedule's due tick once per process; the script dedups across them."""

    def __init__(
        self,
        schedules: Sequence[ScheduleSettings],
        submitter: TickSubmitter,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.schedules = tuple(schedules)
        self.submitter = submitter
        self.clock = clock
        self.handled: dict[str, int] = {}  # name -> the last tick this process settled
        self._warned: dict[str, int] = {}  # name -> the last tick found the queue full

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop`` is set."""
        names = ", ".join(f"{s.name} ({s.every}, {s.tz})" for s in self.schedules)
        logger.info("scheduler: %d schedule(s): %s", len(self.schedules), names)
        while not stop.is_set():
            checked = self.clock()
            pending = await self.tick_once(checked)
            # From the moment checked: a tick that fell while queueing is due at once.
            wake = min(s.next_tick(checked) for s in self.schedules) + AFTER_TICK
            delay = min(wake - self.clock(), RETRY if pending else LONGEST_SLEEP)
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)

    async def tick_once(self, now: float | None = None) -> bool:
        """Queue every tick due at ``now`` not settled yet; True if one must be tried again."""
        pending = False
        now = self.clock() if now is None else now
        for schedule in self.schedules:
            tick = schedule.due(now)
            if tick is None or self.handled.get(schedule.name) == tick:
                continue
            try:
                outcome = await self.submitter.submit(schedule, tick)
            except BackendUnavailable:  # logged once by the submitter's outage log
                pending = True
                continue
            except Exception:
                logger.exception("schedule %s: tick %s failed", schedule.name, tick)
                pending = True
                continue
            if outcome is Outcome.FULL:
                if self._warned.get(schedule.name) != tick:  # once per tick
                    logger.warning(
                        "schedule %s: the queue is full (max_depth); tick %s waits, "
                        "at most max_lateness (%d s)",
                        schedule.name,
                        tick_job_id(schedule.name, tick),
                        schedule.max_lateness,
                    )
                    self._warned[schedule.name] = tick
                pending = True
                continue
            self.handled[schedule.name] = tick  # ADMITTED (logged) or DUPLICATE
        return pending
