"""Queue N jobs through taskhub's own admission (limiter and enqueue, one Lua script
each), with no worker running: the drain row's backlog."""

from __future__ import annotations

import asyncio
from pathlib import Path

from taskhub.hub.kernel import Hub
from taskhub.hub.runtime import opened_queue
from taskhub.limits.admission import Outcome
from taskhub.limits.policy import RequestContext

BATCH = 500


async def enqueue(config: Path, jobs: int) -> int:
    """Admit ``jobs`` submissions for users u0, u1, ... (one each, so the limiter admits
    every one); returns how many were admitted."""
    hub = Hub.from_file(config)
    admitted = 0
    async with opened_queue(hub):
        admission = hub.build_admission()
        spec = hub.tasks[hub.default_task]
        for start in range(0, jobs, BATCH):
            decisions = await asyncio.gather(
                *(
                    admission.admit(spec, RequestContext(f"u{i}", spec.name), None)
                    for i in range(start, min(jobs, start + BATCH))
                )
            )
            admitted += sum(d.outcome is Outcome.ADMITTED for d in decisions)
    return admitted


def enqueue_jobs(config: Path, jobs: int) -> int:
    return asyncio.run(enqueue(config, jobs))
