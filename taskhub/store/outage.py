"""Log a backend outage once when it starts and once when it ends, never per request.

A connection that keeps being dropped (CLIENT KILL, a proxy, a flapping network)
makes many outages of one request each, which would still be two lines per
dropped request. So an outage that starts less than ``quiet`` seconds after the
last line is logged only once it has lasted ``brief`` seconds; the shorter ones
are counted, and the count goes with the next line.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from taskhub.errors import BackendUnavailable
from taskhub.store.unavailable import is_unavailable, why_unavailable

T = TypeVar("T")

QUIET = 10.0
BRIEF = 0.5


class OutageLog:
    """Tracks whether ``what`` is reachable; cheap enough to call on every request."""

    def __init__(
        self,
        what: str,
        logger: logging.Logger,
        *,
        quiet: float = QUIET,
        brief: float = BRIEF,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.what = what
        self.logger = logger
        self.quiet = quiet
        self.brief = brief
        self.clock = clock
        self.down_since: float | None = None
        self._logged = False  # the current outage has been logged
        self._last_line = float("-inf")
        self._unlogged = 0  # brief outages since the last line

    def absorb(self, exc: Exception) -> None:
        """Note ``exc`` as an outage (logged once), or re-raise it if it is a bug instead."""
        if not is_unavailable(exc):
            raise exc
        now = self.clock()
        if self.down_since is None:
            self.down_since, self._logged = now, False
        if self._logged:
            return
        if now - self._last_line >= self.quiet or now - self.down_since >= self.brief:
            self._logged = True
            reason: BaseException = exc
            if isinstance(exc, BackendUnavailable) and exc.__cause__ is not None:
                reason = exc.__cause__  # what Redis said, not a component's "unreachable"
            self._log(now, "%s is unreachable: %s", self.what, reason or type(reason).__name__)

    async def call(self, call: Awaitable[T]) -> T:
        """Await ``call`` for a request: an outage is noted (logged once) and raised as
        BackendUnavailable, which the API answers with 503; any other error is a bug."""
        try:
            result = await call
        except BackendUnavailable as exc:  # a component's own: as it is
            self.absorb(exc)
            raise
        except Exception as exc:
            self.absorb(exc)
            raise BackendUnavailable(why_unavailable(exc)) from exc
        self.succeeded()
        return result

    def succeeded(self) -> None:
        if self.down_since is None:
            return
        now = self.clock()
        lasted, self.down_since = now - self.down_since, None
        if self._logged:
            self._log(now, "%s is reachable again after %.1f s", self.what, lasted)
            return
        self._unlogged += 1
        if now - self._last_line >= self.quiet:
            self._log(now, "%s is reachable", self.what)

    def _log(self, now: float, message: str, *args: object) -> None:
        if self._unlogged:
            message += " (%d brief outage(s) in the %.0f s before were not logged one by one)"
            args = (*args, self._unlogged, now - self._last_line)
            self._unlogged = 0
        self._last_line = now
        self.logger.warning(message, *args)
