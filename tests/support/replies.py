"""What clients under load saw: one Reply per POST /task, and checks over many of them.

Shared by the fault tests (a single Redis restarted, connections dropped) and the
failover test (a Redis Cluster master killed).
"""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx

from taskhub.web.submission import idempotent_job_id
from tests.support.processes import TaskhubProcess

TRANSPORT_ERROR = -1  # the taskhub server itself could not be reached or hung up


@dataclass(frozen=True)
class Reply:
    """One HTTP response as the client saw it, with when it was sent and answered."""

    user: str
    key: str | None
    status: int
    job_id: str | None
    sent: float
    answered: float
    error: str | None = None
    retry_after: str | None = None
    replayed: bool = False

    @property
    def expected_id(self) -> str | None:
        """The job id the Idempotency-Key stands for, known before any response."""
        return idempotent_job_id(self.user, self.key)


async def submit(http: httpx.AsyncClient, url: str, user: str, key: str | None) -> Reply:
    headers = {"Idempotency-Key": key} if key else {}
    sent = time.monotonic()
    try:
        response = await http.post(f"{url}/task", json={"user_id": user}, headers=headers)
    except httpx.TransportError:
        return Reply(user, key, TRANSPORT_ERROR, None, sent, time.monotonic())
    try:
        body = response.json()
    except ValueError:
        body = {"error": f"not JSON: {response.text[:80]!r}"}
    return Reply(
        user,
        key,
        response.status_code,
        body.get("job_id"),
        sent,
        time.monotonic(),
        body.get("error"),
        response.headers.get("Retry-After"),
        response.headers.get("Idempotent-Replayed") == "true",
    )


def assert_503s_are_well_formed(replies: list[Reply]) -> None:
    for reply in replies:
        if reply.status == 503:
            assert reply.error == "unavailable" and reply.retry_after == "1", reply


def assert_quiet(process: TaskhubProcess) -> None:
    """Nothing logged at ERROR: an outage is a WARNING when it starts and when it ends."""
    assert "Traceback" not in process.output and " ERROR " not in process.output, process.output


def completions(log: Path) -> Counter[str]:
    """Completion lines per job id in a file_log sink's file."""
    text = log.read_text() if log.exists() else ""
    return Counter(re.findall(r"job=(\w+) attempt=\d+", text))
