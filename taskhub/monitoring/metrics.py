"""Prometheus metrics: what the server and the worker count, with labelled children bound once.

The request path runs at over 10k requests/s per process, so nothing here
formats a label or looks one up by string per request: every child a request
or a job can touch is bound when the server or the worker starts, and an
update is one dict lookup and one ``inc``/``observe``.

The metric objects live in prometheus_client's default registry, created at
import time, which is what ``PROMETHEUS_MULTIPROC_DIR`` mode needs (see
:mod:`taskhub.monitoring.exporter`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from prometheus_client import Counter, Histogram

from taskhub.limits.admission import Decision
from taskhub.limits.policy import Outcome

if TYPE_CHECKING:
    from taskhub.limits.policy import Rule

# A rule is "near its limit" once a request leaves it at least this used.
NEAR_LIMIT = 0.8

REQUESTS = Counter(
    "taskhub_requests",
    "POST /task submissions (and each item of a POST /tasks batch), by outcome",
    ["outcome"],
)
BAD_REQUESTS = Counter(
    "taskhub_bad_requests",
    "POST /task submissions answered 4xx (other than 429), and POST /tasks batches and "
    "items refused so, by error code",
    ["code"],
)
REFUSALS = Counter(
    "taskhub_refusals",
    "429 answers, by the deciding rule (the body's policy)",
    ["rule"],
)
ADMISSION_SECONDS = Histogram(
    "taskhub_admission_seconds",
    "Time in the admission call (deny cache or one Redis round trip)",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
LIMITER_DECISIONS = Counter(
    "taskhub_limiter_decisions",
    "Each rule's decision per admission: allowed, near_limit (allowed, >= 80% used), "
    "refused, shadow_refused",
    ["rule", "result"],
)
JOBS = Counter(
    "taskhub_jobs",
    "Job outcomes on workers: completed, failed (an attempt), retried, dead, swept, "
    "aborted, handed_back",
    ["task", "outcome"],
)
JOB_SECONDS = Histogram(
    "taskhub_job_seconds",
    "Run time of one attempt (handler and sinks), completed or failed",
    ["task"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0),
)

REQUEST_OUTCOMES = ("admitted", "duplicate", "refused", "queue_full", "unavailable", "error")
BAD_REQUEST_CODES = (
    "invalid_json",
    "invalid_body",
    "invalid_request",
    "invalid_idempotency_key",
    "unsupported_media_type",
    "payload_too_large",
    "unauthorized",
    "forbidden",
    "batch_too_large",
)
RULE_RESULTS = ("allowed", "near_limit", "refused", "shadow_refused")
JOB_OUTCOMES = ("completed", "failed", "retried", "dead", "swept", "aborted", "handed_back")
_OUTCOME_NAMES = {
    Outcome.ADMITTED: "admitted",
    Outcome.DUPLICATE: "duplicate",
    Outcome.REFUSED: "refused",
    Outcome.FULL: "queue_full",
}


class _RuleCounters:
    """One rule's four decision children and its 80% mark, bound once."""

    __slots__ = ("allowed", "near_at", "near_limit", "refusals", "refused", "shadow_refused")

    def __init__(self, rule: Rule) -> None:
        self.allowed, self.near_limit, self.refused, self.shadow_refused = (
            LIMITER_DECISIONS.labels(rule.name, result) for result in RULE_RESULTS
        )
        self.refusals = REFUSALS.labels(rule.name)
        # remaining at or below this: near (rounded, or 20 * 0.2 would be 3.999...)
        self.near_at = round(rule.policy.limit * (1 - NEAR_LIMIT), 9)


class RequestMetrics:
    """The server's counters for one admission policy."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        outcomes = {name: REQUESTS.labels(name) for name in (*REQUEST_OUTCOMES, "bad_request")}
        self.unavailable = outcomes["unavailable"]
        self.error = outcomes["error"]
        self._bad_request = outcomes["bad_request"]
        self._outcomes = {outcome: outcomes[name] for outcome, name in _OUTCOME_NAMES.items()}
        self._codes = {code: BAD_REQUESTS.labels(code) for code in BAD_REQUEST_CODES}
        self._rules = {rule.name: _RuleCounters(rule) for rule in rules}
        self._observe = ADMISSION_SECONDS.observe

    def bad_request(self, code: str) -> None:
        child = self._codes.get(code)
        if child is None:  # Sanic's own 4xx codes: few, bound on first sight
            child = self._codes[code] = BAD_REQUESTS.labels(code)
        child.inc()
        self._bad_request.inc()

    def admission_time(self, seconds: float) -> None:
        self._observe(seconds)

    def decided(self, decision: Decision) -> None:
        self._outcomes[decision.outcome].inc()
        rules = self._rules
        for result in decision.rules:
            counters = rules.get(result.name)
            if counters is None:
                continue
            if result.allowed:
                near = result.remaining <= counters.near_at
                (counters.near_limit if near else counters.allowed).inc()
            else:
                (counters.shadow_refused if result.shadow else counters.refused).inc()
        if decision.outcome is Outcome.REFUSED and decision.deciding is not None:
            counters = rules.get(decision.deciding.name)
            if counters is not None:
                counters.refusals.inc()


class JobMetrics:
    """The worker's counters, one set of children per task."""

    def __init__(self, tasks: Iterable[str]) -> None:
        names = list(tasks)
        self._jobs = {(t, o): JOBS.labels(t, o) for t in names for o in JOB_OUTCOMES}
        self._seconds = {task: JOB_SECONDS.labels(task) for task in names}

    def count(self, task: str, outcome: str) -> None:
        child = self._jobs.get((task, outcome))
        if child is None:  # a job of a task this worker's config does not name
            child = self._jobs[(task, outcome)] = JOBS.labels(task, outcome)
        child.inc()

    def ran(self, task: str, seconds: float) -> None:
        child = self._seconds.get(task)
        if child is None:
            child = self._seconds[task] = JOB_SECONDS.labels(task)
        child.observe(seconds)
