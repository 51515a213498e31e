"""``taskhub jobs failed | retry | purge | show``: dead letters from the command line.

A dead letter is a job that used all its attempts. It is kept, with its error,
for ``queue.dead_letter_ttl``; these commands list, re-queue or delete them
through the queue's own interface, so they work for any queue plugin.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import click
import orjson

from taskhub.cli.group import ActionGroup, columns, config_argument, refuse_embedded
from taskhub.components import QueueBackend
from taskhub.errors import UsageError
from taskhub.hub import runtime
from taskhub.hub.kernel import Hub
from taskhub.jobs import JobInfo, iso

ERROR_WIDTH = 60


@asynccontextmanager
async def opened_queue(path: str) -> AsyncIterator[QueueBackend]:
    async with opened_hub(path) as (_, queue):
        yield queue


@asynccontextmanager
async def opened_hub(path: str) -> AsyncIterator[tuple[Hub, QueueBackend]]:
    """The hub of ``path`` with its queue open, on the Redis the workers use."""
    hub = Hub.from_file(path)
    refuse_embedded(path, "redis.url", hub.settings.redis.url, "jobs")
    async with runtime.opened_queue(hub) as queue:
        yield hub, queue


jobs = ActionGroup("jobs", "list, re-queue or purge failed jobs (dead letters)", opened_queue)


@jobs.action("list dead letters, oldest first")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line")
@click.option("--limit", type=int, default=None, help="show at most this many")
async def failed(queue: QueueBackend, as_json: bool, limit: int | None) -> int:
    letters = await queue.dead_letters(limit)
    if as_json:
        for job in letters:
            sys.stdout.write(orjson.dumps(job.to_json()).decode() + "\n")
    elif not letters:
        sys.stdout.write("no dead letters\n")
    else:
        sys.stdout.write(table(letters))
    return 0


def table(letters: list[JobInfo]) -> str:
    header = ("ID", "TASK", "USER", "ATTEMPTS", "FAILED AT", "ERROR")
    rows = [header] + [
        (
            job.job_id,
            job.task,
            job.user_id,
            f"{job.attempts}/{job.max_attempts}",
            iso(job.completed_at) or "-",
            shorten(job.error_summary),
        )
        for job in letters
    ]
    return "\n".join(columns(rows)) + f"\n{len(letters)} dead letter(s)\n"


def shorten(text: str) -> str:
    return text if len(text) <= ERROR_WIDTH else text[: ERROR_WIDTH - 1] + "…"


@jobs.command(help="queue dead letters again, with fresh attempts")
@config_argument
@click.argument("ids", metavar="[ID]...", nargs=-1, help="job ids to retry")
@click.option("--all", "every", is_flag=True, help="retry every dead letter")
def retry(config: str, ids: tuple[str, ...], every: bool) -> int:
    if every and ids:
        raise click.UsageError("give job IDs or --all, not both")
    if not (every or ids):
        raise click.UsageError("give the IDs of the dead letters to retry, or --all")
    return jobs.act(config, lambda queue: requeue(queue, list(dict.fromkeys(ids)) or None))


async def requeue(queue: QueueBackend, ids: list[str] | None) -> int:
    """Queue ``ids`` again (every dead letter when None), after checking each is one."""
    if ids is not None:
        known = {job.job_id for job in await queue.dead_letters()}
        unknown = [job_id for job_id in ids if job_id not in known]
        if unknown:
            raise UsageError(f"not a dead letter: {', '.join(unknown)} (see `taskhub jobs failed`)")
    moved = await queue.retry_dead(ids)
    sys.stdout.write(f"re-queued {len(moved)} job(s)\n")
    for job_id in moved:
        sys.stdout.write(f"  {job_id}\n")
    return 0


@jobs.action("delete every dead letter")
async def purge(queue: QueueBackend) -> int:
    count = await queue.purge_dead()
    sys.stdout.write(f"purged {count} dead letter(s)\n")
    return 0


@jobs.action("print one job's state as JSON")
@click.argument("job_id", metavar="ID", help="job id")
async def show(queue: QueueBackend, job_id: str) -> int:
    job = await queue.status(job_id)
    if job is None:
        raise UsageError(f"no job {job_id!r} (unknown, malformed, or expired)")
    sys.stdout.write(orjson.dumps(job.to_json(), option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0
