"""Log a backend outage once when it starts and once when it ends, never per request."""

from __future__ import annotations

import logging
import time

from taskhub.redis_client import is_unavailable


class OutageLog:
    """Tracks whether ``what`` is reachable; cheap enough to call on every request."""

    def __init__(self, what: str, logger: logging.Logger) -> None:
        self.what = what
        self.logger = logger
        self.down_since: float | None = None

    def absorb(self, exc: Exception) -> None:
        """Note ``exc`` as an outage (logged once), or re-raise it if it is a bug instead."""
        if not is_unavailable(exc):
            raise exc
        if self.down_since is None:
            self.down_since = time.monotonic()
            self.logger.warning("%s is unreachable: %s", self.what, exc or type(exc).__name__)

    def succeeded(self) -> None:
        if self.down_since is not None:
            lasted = time.monotonic() - self.down_since
            self.down_since = None
            self.logger.warning("%s is reachable again after %.1f s", self.what, lasted)
