"""Submit a task to a running taskhub, wait for it, and show what came back.

    python examples/client_submit.py http://127.0.0.1:8000

(`make run` starts one there.) Run by tests/test_client.py against a live server.
"""

from __future__ import annotations

import sys

from taskhub.client import Client, Invalid, RateLimited, Retry


def main(base_url: str) -> int:
    # Retries are opt-in: 429 and 503 after the server's Retry-After (with jitter), and
    # lost answers, for up to 30 s. Each submission carries one Idempotency-Key, so a
    # retry after a lost answer returns the same job instead of queueing another.
    with Client(base_url, retry=Retry(deadline=30)) as client:
        try:
            queued = client.submit("alice", payload={"text": "hello from the client"})
        except RateLimited as refused:
            print(f"rate limited by {refused.policy}: retry in {refused.retry_after} s")
            return 3
        except Invalid as invalid:
            for problem in invalid.problems:
                print(f"{problem.field}: {problem.message}")
            return 2
        print(f"queued {queued.job_id} ({queued.task})")
        job = client.wait(queued.job_id, timeout=30)  # settled, or its state after 30 s
        print(f"{job.status}: {job.result!r} after {job.attempts} attempt(s)")
        return 0 if job.status == "complete" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8000"))
