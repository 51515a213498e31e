"""``taskhub jobs failed | retry | purge | show``: dead letters from the command line.

A dead letter is a job that used all its attempts. It is kept, with its error,
for ``queue.dead_letter_ttl``; these commands list, re-queue or delete them
through the queue's own interface, so they work for any queue plugin.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson

from taskhub.cli.group import CommandGroup, columns, refuse_embedded
from taskhub.components import QueueBackend
from taskhub.errors import UsageError
from taskhub.hub import runtime
from taskhub.hub.kernel import Hub
from taskhub.jobs import JobInfo, iso

ERROR_WIDTH = 60


def add_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add ``jobs`` and its actions to the top-level subparsers."""
    jobs = CommandGroup(
        commands, common, "jobs", "list, re-queue or purge failed jobs (dead letters)", opened_queue
    )
    sub = jobs.action("failed", "list dead letters, oldest first", failed)
    sub.add_argument("--json", action="store_true", help="one JSON object per line")
    sub.add_argument("--limit", type=int, default=None, help="show at most this many")
    sub = jobs.action("retry", "queue dead letters again, with fresh attempts", retry)
    which = sub.add_mutually_exclusive_group(required=True)
    which.add_argument("ids", metavar="ID", nargs="*", default=[], help="job ids to retry")
    which.add_argument("--all", action="store_true", help="retry every dead letter")
    jobs.action("purge", "delete every dead letter", purge)
    sub = jobs.action("show", "print one job's state as JSON", show)
    sub.add_argument("id", metavar="ID", help="job id")


@asynccontextmanager
async def opened_queue(path: str) -> AsyncIterator[QueueBackend]:
    hub = Hub.from_file(path)
    refuse_embedded(path, "redis.url", hub.settings.redis.url, "jobs")
    async with runtime.opened_queue(hub) as queue:
        yield queue


async def failed(queue: QueueBackend, args: argparse.Namespace) -> int:
    letters = await queue.dead_letters(args.limit)
    if args.json:
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


async def retry(queue: QueueBackend, args: argparse.Namespace) -> int:
    if args.all:
        moved = await queue.retry_dead(None)
    else:
        known = {job.job_id for job in await queue.dead_letters()}
        unknown = [job_id for job_id in args.ids if job_id not in known]
        if unknown:
            raise UsageError(f"not a dead letter: {', '.join(unknown)} (see `taskhub jobs failed`)")
        moved = await queue.retry_dead(list(dict.fromkeys(args.ids)))
    sys.stdout.write(f"re-queued {len(moved)} job(s)\n")
    for job_id in moved:
        sys.stdout.write(f"  {job_id}\n")
    return 0


async def purge(queue: QueueBackend, args: argparse.Namespace) -> int:
    count = await queue.purge_dead()
    sys.stdout.write(f"purged {count} dead letter(s)\n")
    return 0


async def show(queue: QueueBackend, args: argparse.Namespace) -> int:
    job = await queue.status(args.id)
    if job is None:
        raise UsageError(f"no job {args.id!r} (unknown, malformed, or expired)")
    sys.stdout.write(orjson.dumps(job.to_json(), option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0
