"""Rate-limit response headers: the de-facto ``X-RateLimit-*`` set and the IETF draft's.

``RateLimit-Policy`` and ``RateLimit`` (draft-ietf-httpapi-ratelimit-headers)
list every rule of the policy, shadow rules included, by name. The single-valued
``X-RateLimit-*`` set describes the deciding rule: the refusal to wait out
longest, or else the rule closest to its limit. ``X-RateLimit-Reset`` is a Unix
time in seconds (as GitHub sends it) on the Redis clock. ``Retry-After``
(refusals only) says when the next request can pass.
"""

from __future__ import annotations

import functools
import math

from taskhub.limits.admission import Decision
from taskhub.limits.policy import RuleResult


def _seconds(ms: int) -> int:
    return math.ceil(ms / 1000) if ms > 0 else 0


def _window(window: float) -> str:
    return str(int(window)) if float(window).is_integer() else f"{window:g}"


@functools.lru_cache(maxsize=1024)
def _policy_item(name: str, limit: int, window: float) -> str:
    """Constant per rule, so made once: every response carries it."""
    return f'"{name}";q={limit};w={_window(window)}'


def _state_item(rule: RuleResult) -> str:
    return f'"{rule.name}";r={rule.remaining};t={_seconds(rule.reset_ms)}'


def retry_after(decision: Decision) -> int:
    """Seconds until every refusing rule would admit: the longest wait, at least 1."""
    longest = max((r.retry_ms for r in decision.refusing), default=0)
    return max(1, _seconds(longest))


def rate_limit_headers(decision: Decision) -> dict[str, str]:
    """Every rate-limit header a decision's response carries (none when no rule decided)."""
    rule = decision.deciding
    if rule is None:
        return {}
    rules = decision.rules
    policy = rule.policy
    if len(rules) == 1:  # one rule, the common policy: no generators to run
        policies, states = _policy_item(rule.name, policy.limit, policy.window), _state_item(rule)
    else:
        policies = ", ".join(_policy_item(r.name, r.policy.limit, r.policy.window) for r in rules)
        states = ", ".join(_state_item(r) for r in rules)
    headers = {
        "X-RateLimit-Limit": str(policy.limit),
        "X-RateLimit-Remaining": str(rule.remaining),
        "X-RateLimit-Reset": str(math.ceil((decision.now_ms + rule.reset_ms) / 1000)),
        "RateLimit-Policy": policies,
        "RateLimit": states,
    }
    if decision.refusing:
        headers["Retry-After"] = str(retry_after(decision))
    return headers
