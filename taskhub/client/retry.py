"""Opt-in retries: for a 429 or a 503 after the server's Retry-After, and for an answer
that never came (connection refused or dropped, timeout) after a growing backoff; each
wait stretched by a random jitter, so that clients refused together do not come back
together, and none started after the call's deadline.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from taskhub.client.errors import ClientError, RateLimited, Unavailable


@dataclass(frozen=True, slots=True)
class Retry:
    """How a call retries; ``Client(..., retry=Retry())`` turns it on (off by default).

    ``deadline``: seconds from the call's start after which no attempt starts (the
    last error is raised instead). ``statuses``: which of 429 and 503 are retried.
    ``connection``: retry when no answer came; a submission is safe to retry, since
    it carries the same Idempotency-Key. ``backoff``: the first wait when the server
    gave no Retry-After, doubled each time up to ``max_backoff``. ``jitter``: each
    wait grows by a random fraction up to this.
    """

    deadline: float = 30.0
    statuses: frozenset[int] = frozenset({429, 503})
    connection: bool = True
    backoff: float = 0.1
    max_backoff: float = 5.0
    jitter: float = 0.25

    def __post_init__(self) -> None:
        if not self.statuses <= {429, 503}:
            raise ValueError(f"Retry.statuses: only 429 and 503 are retried, not {self.statuses}")
        for name in ("deadline", "backoff", "max_backoff", "jitter"):
            if getattr(self, name) < 0:
                raise ValueError(f"Retry.{name} must be >= 0")


@dataclass(slots=True)
class Attempts:
    """One call's attempts under ``policy`` (None: a single attempt)."""

    policy: Retry | None
    clock: Callable[[], float] = time.monotonic
    rand: Callable[[], float] = random.random
    deadline: float = field(init=False)
    backoff: float = field(init=False)

    def __post_init__(self) -> None:
        policy = self.policy
        self.deadline = self.clock() + (policy.deadline if policy else 0.0)
        self.backoff = policy.backoff if policy else 0.0

    def delay(self, error: ClientError) -> float | None:
        """Seconds to wait before trying again after ``error``; None: raise it."""
        policy = self.policy
        if policy is None:
            return None
        wait = self._base(policy, error)
        if wait is None:
            return None
        wait *= 1 + policy.jitter * self.rand()
        if self.clock() + wait > self.deadline:
            return None
        return wait

    def _base(self, policy: Retry, error: ClientError) -> float | None:
        if isinstance(error, RateLimited):
            return float(error.retry_after) if 429 in policy.statuses else None
        if not isinstance(error, Unavailable):
            return None
        if error.status is None and not policy.connection:
            return None
        if error.status == 503 and 503 not in policy.statuses:
            return None
        if error.retry_after is not None:
            return error.retry_after
        wait = self.backoff
        self.backoff = min(policy.max_backoff, max(self.backoff * 2, 0.01))
        return wait
