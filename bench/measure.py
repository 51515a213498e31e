"""Pure pieces of the harness: wrk's output, medians, ratios and verdicts.

Nothing here starts a process, so ``bench/tests/test_bench_parsing.py`` checks it fast.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

# wrk prints times with these units (format_time_us), and sizes/rates with k, M, G.
_TIME_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
_TIME = r"([\d.]+)(us|ms|s|m|h)"


@dataclass(frozen=True)
class WrkResult:
    """What one wrk run measured. Latencies in ms."""

    requests: int
    seconds: float
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int

    @property
    def ok(self) -> int:
        """Responses that were 2xx or 3xx (wrk counts the rest as non-2xx)."""
        return self.requests - self.non_2xx

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


class WrkParseError(ValueError):
    pass


def to_ms(value: str, unit: str) -> float:
    return float(value) * _TIME_UNITS[unit]


def parse_wrk(output: str) -> WrkResult:
    """Parse ``wrk --latency`` output: totals, Requests/sec, the p50 and p99 lines."""
    total = re.search(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h),", output, re.M)
    rate = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M)
    p50 = re.search(rf"^\s+50(?:\.000)?%\s+{_TIME}", output, re.M)
    p99 = re.search(rf"^\s+99(?:\.000)?%\s+{_TIME}", output, re.M)
    if not (total and rate and p50 and p99):
        raise WrkParseError(f"unexpected wrk output:\n{output}")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    socket = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    return WrkResult(
        requests=int(total.group(1)),
        seconds=to_ms(total.group(2), total.group(3)) / 1000,
        requests_per_s=float(rate.group(1)),
        p50_ms=to_ms(p50.group(1), p50.group(2)),
        p99_ms=to_ms(p99.group(1), p99.group(2)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(g) for g in socket.groups()) if socket else 0,
    )


def median(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("median of nothing")
    return float(statistics.median(values))


def ratio(a: float, b: float) -> float:
    """A over B; infinite when B measured nothing (A something), NaN when neither did."""
    if b == 0:
        return float("inf") if a > 0 else float("nan")
    return a / b


def pair_order(index: int) -> tuple[str, str]:
    """A then B in even pairs, B then A in odd ones, so drift cancels out."""
    return ("A", "B") if index % 2 == 0 else ("B", "A")


Op = Literal[">=", "<=", "info"]
Verdict = Literal["PASS", "SHORT", "INFO", "MISSING", "ERROR"]


def verdict(value: float | None, op: Op, target: float | None) -> Verdict:
    if op == "info":
        return "INFO"
    if value is None or target is None or value != value:  # NaN: nothing measured
        return "MISSING"
    passed = value >= target if op == ">=" else value <= target
    return "PASS" if passed else "SHORT"


@dataclass
class Metric:
    """One line of the table: a figure (usually the median of per-pair ratios A/B)
    against its target, with the A and B figures it came from."""

    row: str
    name: str
    op: Op
    target: float | None
    unit: str  # "x" for a ratio, or the unit of an absolute figure
    a_label: str
    b_label: str = ""
    value: float | None = None
    a_value: float | None = None  # median of A's figure over the pairs
    b_value: float | None = None
    figure: str = ""  # what A and B are (requests/s, p99 ms, jobs/s, ...)
    pairs: list[dict[str, Any]] = field(default_factory=list)
    note: str = ""
    status: Verdict | None = None  # set for MISSING/ERROR; otherwise from value and target

    @property
    def verdict(self) -> Verdict:
        if self.status is not None:
            return self.status
        return verdict(self.value, self.op, self.target)

    def target_text(self) -> str:
        if self.op == "info" or self.target is None:
            return "(info)"
        return f"{self.op} {self.target:g}{self.unit}"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "verdict": self.verdict, "target_text": self.target_text()}


def summarize(
    metric: Metric,
    pairs: list[dict[str, Any]],
    a_key: str,
    b_key: str,
) -> Metric:
    """Fill ``metric`` from raw pairs: each pair holds A's and B's figure under the same
    key (``a_key`` in ``pair["A"]``, ``b_key`` in ``pair["B"]``); the value is the median
    of the per-pair ratios."""
    complete = [p for p in pairs if p.get("A") and p.get("B")]
    metric.pairs = pairs
    if not complete:
        metric.status = "MISSING"
        a_only = [p["A"][a_key] for p in pairs if p.get("A")]
        metric.a_value = median(a_only) if a_only else None
        return metric
    ratios = [ratio(p["A"][a_key], p["B"][b_key]) for p in complete]
    metric.value = median(ratios)
    metric.a_value = median([p["A"][a_key] for p in complete])
    metric.b_value = median([p["B"][b_key] for p in complete])
    return metric


def failed(row: str, message: str, status: Verdict = "ERROR") -> Metric:
    """The line of a row (or part of one) that could not be measured, saying why."""
    name = "(row failed)" if status == "ERROR" else "(not run)"
    metric = Metric(row, name, "info", None, "", "", status=status)
    metric.note = message.strip().replace("\n", " | ")[:600]
    return metric


def skipped(row: str, reason: str) -> Metric:
    """The line of a row that was asked for and cannot run here (a server missing)."""
    return failed(row, reason, status="MISSING")
