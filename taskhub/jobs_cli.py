"""``taskhub jobs failed | retry | purge | show``: dead letters from the command line.

A dead letter is a job that used all its attempts. It is kept, with its error,
for ``queue.dead_letter_ttl``; these commands list, re-queue or delete them
through the queue's own interface, so they work for any queue plugin.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import orjson

from taskhub.components import QueueBackend
from taskhub.errors import BackendUnavailable, StartupError, UsageError
from taskhub.hub import Hub
from taskhub.jobs import JobInfo, iso

ERROR_WIDTH = 60


def add_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add ``jobs`` and its actions to the top-level subparsers."""
    jobs = commands.add_parser(
        "jobs", help="list, re-queue or purge failed jobs (dead letters)", parents=[common]
    )
    actions = jobs.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name: str, help_text: str, run: Callable[..., Coroutine[Any, Any, int]]) -> Any:
        sub = actions.add_parser(name, help=help_text, description=help_text, parents=[common])
        sub.add_argument("config", metavar="CONFIG", help="YAML config file")
        sub.set_defaults(handler=lambda args: asyncio.run(with_queue(args, run)))
        return sub

    sub = action("failed", "list dead letters, oldest first", failed)
    sub.add_argument("--json", action="store_true", help="one JSON object per line")
    sub.add_argument("--limit", type=int, default=None, help="show at most this many")
    sub = action("retry", "queue dead letters again, with fresh attempts", retry)
    which = sub.add_mutually_exclusive_group(required=True)
    which.add_argument("ids", metavar="ID", nargs="*", default=[], help="job ids to retry")
    which.add_argument("--all", action="store_true", help="retry every dead letter")
    action("purge", "delete every dead letter", purge)
    sub = action("show", "print one job's state as JSON", show)
    sub.add_argument("id", metavar="ID", help="job id")


async def with_queue(args: argparse.Namespace, run: Callable[..., Coroutine[Any, Any, int]]) -> int:
    async with opened_queue(args.config) as queue:
        try:
            return await run(queue, args)
        except BackendUnavailable as exc:
            raise StartupError(f"Redis is unreachable: {exc.__cause__ or exc}") from exc


@asynccontextmanager
async def opened_queue(path: str) -> AsyncIterator[QueueBackend]:
    hub = Hub.from_file(path)
    if hub.embedded:
        raise UsageError(
            f"{path}: redis.url is memory://, whose jobs live only inside a running "
            "`taskhub run`: point redis.url at the Redis server the workers use"
        )
    hub.redis = hub.connect_redis()
    try:
        await hub.queue.open(hub)
        yield hub.queue
    finally:
        await hub.queue.close()
        await hub.redis.aclose()


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
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) for row in rows]
    lines = [f"{line}  {row[-1]}".rstrip() for line, row in zip(lines, rows, strict=True)]
    return "\n".join(lines) + f"\n{len(letters)} dead letter(s)\n"


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
