"""The client's plans without a server, for what a live one cannot be made to do on
demand: a server that refuses ``?wait=`` with a 422, and the retry arithmetic (waits
never below Retry-After, jitter within its bound, nothing started after the deadline).
The client's behaviour against a live taskhub is tests/test_client.py's."""

from __future__ import annotations

import httpx
import pytest

from taskhub.client import Client, RateLimited, Retry, Unavailable
from taskhub.client.retry import Attempts

JOB = {
    "job_id": "j1",
    "task": "log_completion",
    "user_id": "u",
    "status": "queued",
    "attempts": 0,
    "max_attempts": 1,
    "queued_at": None,
    "retry_at": None,
    "started_at": None,
    "completed_at": None,
    "result": None,
    "error": None,
}


def test_wait_polls_when_the_server_refuses_the_wait_parameter() -> None:
    seen: list[str] = []

    def server(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        if "wait" in request.url.params:
            problems = [{"field": "wait", "message": "unknown parameter"}]
            return httpx.Response(
                422, json={"error": "invalid_request", "message": "wait", "problems": problems}
            )
        done = len(seen) >= 4
        return httpx.Response(
            200, json={**JOB, "status": "complete" if done else "active", "brand_new": 1}
        )

    with Client("http://taskhub.test/prefix", transport=httpx.MockTransport(server)) as client:
        job = client.wait("j1", timeout=30)
        assert job.status == "complete"
        assert client._server_waits.known is False
        assert seen[0].startswith("http://taskhub.test/prefix/task/j1?wait=")
        assert all("wait" not in url for url in seen[1:])


def test_retry_waits_follow_retry_after_with_bounded_jitter_until_the_deadline() -> None:
    now = [0.0]
    attempts = Attempts(Retry(deadline=10, jitter=0.5), clock=lambda: now[0], rand=lambda: 1.0)
    refused = RateLimited("x", retry_after=2, policy="p", refused_by=["p"])
    assert attempts.delay(refused) == 3.0  # 2 s and at most 50 % more
    now[0] = 8.0
    assert attempts.delay(refused) is None  # 8 + 3 > 10: give up
    lost = Unavailable("no answer")
    backoff = Attempts(Retry(deadline=10, jitter=0), clock=lambda: 0.0)
    assert [backoff.delay(lost) for _ in range(3)] == [0.1, 0.2, 0.4]
    assert Attempts(None).delay(refused) is None
    only_503 = Attempts(Retry(statuses=frozenset({503})))
    assert only_503.delay(refused) is None
    assert Attempts(Retry(connection=False)).delay(lost) is None
    with pytest.raises(ValueError, match="statuses"):
        Retry(statuses=frozenset({500}))
