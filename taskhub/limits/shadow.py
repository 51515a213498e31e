"""Shadow-mode refusals: counted and logged, never enforced, and never logged per request.

A shadow rule is decided like any other, but when it would refuse, the request
goes on. Each process logs the first such refusal of a rule at once, then a
count every ``interval`` seconds while they keep coming, so a rule being tried
out in production shows what it would do without flooding the log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from taskhub.limits.policy import RuleResult

INTERVAL = 10.0


@dataclass
class _Tally:
    count: int = 0
    logged_at: float = float("-inf")
    example: str = ""


class ShadowLog:
    def __init__(self, logger: logging.Logger, interval: float = INTERVAL) -> None:
        self.logger = logger
        self.interval = interval
        self.totals: dict[str, int] = {}
        self._tallies: dict[str, _Tally] = {}

    def note(self, results: Sequence[RuleResult], subjects: Sequence[str]) -> None:
        for result, subject in zip(results, subjects, strict=True):
            if result.shadow and not result.allowed:
                self._count(result.name, subject)

    def _count(self, rule: str, subject: str) -> None:
        self.totals[rule] = self.totals.get(rule, 0) + 1
        tally = self._tallies.setdefault(rule, _Tally())
        tally.count += 1
        tally.example = subject
        now = time.monotonic()
        if now - tally.logged_at >= self.interval:
            self.logger.info(
                "shadow rule %r would have refused %d request(s) (latest key %r); admitted",
                rule,
                tally.count,
                subject,
            )
            tally.count, tally.logged_at = 0, now
