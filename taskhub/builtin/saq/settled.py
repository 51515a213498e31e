"""Wait for a job to settle without polling: one blocking stream reader per shard.

A waiter (``GET /task/{id}?wait=N``) sets a marker key for its job; the fenced step
that settles a job (:data:`taskhub.builtin.saq.redis_queue.STEP_LUA`: finish or
dead, the worker's, the sweep's and the API's alike) adds the job to the shard's
``settled`` stream only when that marker exists, so unwatched jobs pay one EXISTS.
Each process reads each shard's stream with one XREAD BLOCK on a connection of its
own and wakes its local waiters: 1,000 waiters cost one connection per shard, not
1,000, and nothing is asked of Redis while nothing settles.

No wake-up is lost: a waiter registers locally, makes sure the reader holds a
stream position (an id read from Redis), then sets the marker and reads the job in
one round trip. A step that settles the job runs atomically either before the
marker is set (the read sees the job settled) or after it (its entry comes after
the reader's position, so the reader sees it). The reader never skips ahead
(across an outage too, it reads on from where it was); it stops once it has no
waiters, and the next one starts it again from a fresh position.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from redis.exceptions import ConnectionError as RedisConnectionError

from taskhub.jobs import MAX_WAIT
from taskhub.store.outage import OutageLog

if TYPE_CHECKING:
    from redis.asyncio import Redis

logger = logging.getLogger(__name__)

# A marker outlives any wait: a later, shorter wait never cuts an earlier one short.
MARKER_TTL_MS = int((MAX_WAIT + 30) * 1000)
# How long one XREAD blocks: a reader with no waiters left stops within this.
BLOCK_S = 2.0
# Entries one XREAD returns at most (more are read in the next round at once).
READ_COUNT = 500
OUTAGE_BACKOFF = 0.5
# What a woken waiter is given: the job as it settled when it is gone (ttl -1), else None.
Settled = bytes | None


class SettledReader:
    """One shard's stream of settled jobs, read for this process's waiters."""

    def __init__(self, stream: str, connect: Callable[[], Redis], what: str) -> None:
        self.stream = stream
        self._connect = connect
        self._client: Redis | None = None
        self._waiters: dict[bytes, set[asyncio.Future[Settled]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._position: bytes | None = None  # the id the next XREAD reads after
        self._positioned: asyncio.Future[None] | None = None
        self._outage = OutageLog(f"Redis (waiting for jobs, {what})", logger)
        self._ended = False  # the process is stopping: every wait answers at once

    @property
    def waiting(self) -> int:
        """Waiters registered in this process (each one request)."""
        return sum(len(futures) for futures in self._waiters.values())

    @property
    def running(self) -> bool:
        return self._task is not None

    def register(self, job_key: bytes) -> asyncio.Future[Settled]:
        """A future resolved when ``job_key`` settles; release it when done with it."""
        future: asyncio.Future[Settled] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(job_key, set()).add(future)
        if self._ended:
            future.set_result(None)
        return future

    def end(self) -> None:
        """The process is stopping: wake every waiter now, and any later one at once, so
        each answers with its job's current state (as after its N seconds) instead of
        holding a connection the server is draining until the grace period cuts it."""
        self._ended = True
        for futures in self._waiters.values():
            for future in futures:
                if not future.done():
                    future.set_result(None)

    def release(self, job_key: bytes, future: asyncio.Future[Settled]) -> None:
        futures = self._waiters.get(job_key)
        if futures is not None:
            futures.discard(future)
            if not futures:
                del self._waiters[job_key]
        if not future.done():
            future.cancel()

    async def positioned(self) -> None:
        """Start the reader if it is not running; return once it holds a stream position,
        so that every entry added from now on reaches this process's waiters. Raises
        redis-py's error when Redis cannot be reached."""
        if self._ended:  # its waiters are woken already: nothing to read for them
            return
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"settled-{self.stream}")
        if self._position is not None:
            return
        if self._positioned is None:
            self._positioned = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._positioned)

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    # ------------------------------------------------------------------ the reader

    async def _run(self) -> None:
        try:
            while True:
                try:
                    await self._round()
                except Exception as exc:
                    self._outage.absorb(exc)  # logged once; a bug is raised
                    positioned, self._positioned = self._positioned, None
                    if positioned is not None and not positioned.done():
                        positioned.set_exception(exc)
                        positioned.exception()  # retrieved: its waiters may have gone
                    if not self._waiters:
                        return
                    await asyncio.sleep(OUTAGE_BACKOFF)
                    continue
                self._outage.succeeded()
                if not self._waiters:
                    return
        finally:
            # Gone with no waiters (or cancelled): the next waiter starts afresh.
            if asyncio.current_task() is self._task:
                self._task = None
            self._position = None
            positioned, self._positioned = self._positioned, None
            if positioned is not None and not positioned.done():  # closed meanwhile
                positioned.set_exception(RedisConnectionError("the reader stopped"))
                positioned.exception()

    async def _round(self) -> None:
        client = self._client
        if client is None:
            client = self._client = self._connect()
        if self._position is None:
            last = await client.xrevrange(self.stream, count=1)
            self._position = last[0][0] if last else b"0-0"
            positioned, self._positioned = self._positioned, None
            if positioned is not None and not positioned.done():
                positioned.set_result(None)
            if not self._waiters:
                return
        read = await client.xread(
            {self.stream: self._position}, count=READ_COUNT, block=int(BLOCK_S * 1000)
        )
        for _, entries in read or ():
            for entry_id, fields in entries:
                self._position = entry_id
                self._wake(fields)

    def _wake(self, fields: dict[Any, Any]) -> None:
        futures = self._waiters.get(fields.get(b"job", b""))
        if not futures:
            return
        data = fields.get(b"data")
        for future in futures:
            if not future.done():
                future.set_result(data)
