"""Rate-limit response headers: the de-facto ``X-RateLimit-*`` set and the IETF draft's.

``X-RateLimit-Reset`` is a Unix time in seconds (as GitHub sends it), taken from
the Redis clock; the draft's ``RateLimit`` carries the same moment as a delta
(``t``). Both say when the quota is whole again. ``Retry-After`` (refusals only)
says when the next request can pass, which for a token bucket is much sooner.
"""

from __future__ import annotations

import math

from taskhub.admission import Decision, Outcome


def _seconds(ms: int) -> int:
    return math.ceil(ms / 1000) if ms > 0 else 0


def _window(window: float) -> str:
    return str(int(window)) if float(window).is_integer() else f"{window:g}"


def rate_limit_headers(decision: Decision) -> dict[str, str]:
    rule = decision.rule
    limit = rule.policy.limit
    reset = _seconds(rule.reset_ms)
    headers = {
        "X-RateLimit-Limit": str(limit),
        "X-RateLimit-Remaining": str(rule.remaining),
        "X-RateLimit-Reset": str(math.ceil((decision.now_ms + rule.reset_ms) / 1000)),
        "RateLimit-Policy": f'"{rule.name}";q={limit};w={_window(rule.policy.window)}',
        "RateLimit": f'"{rule.name}";r={rule.remaining};t={reset}',
    }
    if decision.outcome is Outcome.REFUSED:
        headers["Retry-After"] = str(max(1, _seconds(rule.retry_ms)))
    return headers
