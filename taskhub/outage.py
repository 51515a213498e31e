"""Log a backend outage once when it starts and once when it ends, never per request."""

from __future__ import annotations

import logging
import time


class OutageLog:
    """Tracks whether ``what`` is reachable; cheap enough to call on every request."""

    def __init__(self, what: str, logger: logging.Logger) -> None:
        self.what = what
        self.logger = logger
        self.down_since: float | None = None

    def failed(self, exc: BaseException) -> None:
        if self.down_since is None:
            self.down_since = time.monotonic()
            self.logger.warning("%s is unreachable: %s", self.what, exc or type(exc).__name__)

    def succeeded(self) -> None:
        if self.down_since is not None:
            lasted = time.monotonic() - self.down_since
            self.down_since = None
            self.logger.warning("%s is reachable again after %.1f s", self.what, lasted)
