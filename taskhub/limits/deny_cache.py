"""Answer keys Redis has already refused from memory, until Redis says they may pass.

When a rule refuses a key with "retry in R ms", every request for that key and
at least that cost is refused by Redis until then too: the strategies only
refuse more as state accumulates, never less. So this process may refuse those
requests itself, without a round trip. The deadline is measured from when the
request was *sent*, before Redis decided, so a cached refusal always expires
no later than Redis's own. The cache can therefore refuse only what Redis would
refuse, and it can never admit anything.

Bounded: the least recently refused keys are dropped first.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

from taskhub.limits.policy import RuleResult


@dataclass(frozen=True, slots=True)
class CachedRefusal:
    result: RuleResult
    sent_at: float  # time.monotonic() when the refused request was sent
    cost: int

    @property
    def until(self) -> float:
        return self.sent_at + self.result.retry_ms / 1000


class DenyCache:
    def __init__(self, max_keys: int) -> None:
        self.max_keys = max_keys
        self._entries: OrderedDict[tuple[str, str], CachedRefusal] = OrderedDict()
        self.hits = 0

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, rule: str, subject: str, cost: int, now: float) -> CachedRefusal | None:
        """The refusal still standing for ``subject`` under ``rule`` at ``cost``, if any."""
        key = (rule, subject)
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.until <= now:
            del self._entries[key]
            return None
        if cost < entry.cost:  # a lighter request may fit where this one did not
            return None
        self.hits += 1
        return entry

    def remember(self, subject: str, result: RuleResult, cost: int, sent_at: float) -> None:
        if result.retry_ms <= 0:
            return
        key = (result.name, subject)
        self._entries[key] = CachedRefusal(result, sent_at, cost)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_keys:
            self._entries.popitem(last=False)

    def forget(self, rule: str, subject: str) -> None:
        """Drop the entry for ``subject`` under ``rule``: an admin reset emptied its state."""
        self._entries.pop((rule, subject), None)

    @staticmethod
    def clock() -> float:
        return time.monotonic()
