"""``taskhub status CONFIG [--watch [SECONDS]] [--json]``: the queue at a glance.

Depth, the workers that report themselves, rates and the newest dead letters,
read through the queue's :meth:`~taskhub.components.QueueBackend.snapshot`
(:mod:`taskhub.monitoring.snapshot`), so it works for any queue plugin that offers one.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime

import click
import orjson

from taskhub.cli.group import NumberIn, columns, config_argument, opened_run
from taskhub.cli.jobs import opened_hub, shorten
from taskhub.components import QueueBackend
from taskhub.jobs import QueueSnapshot, iso
from taskhub.monitoring.schedules import ScheduleBoard, ScheduleJson
from taskhub.monitoring.snapshot import Rates, queue_json

DEFAULT_WATCH = 2.0
# Home the cursor and clear the screen: each refresh replaces the last on a terminal.
CLEAR = "\x1b[H\x1b[2J"


SECONDS = NumberIn(
    float,
    0.1,
    3600.0,
    noun="a number of seconds",
    out_of_range="{value:g} is out of range (0.1 to 3600 seconds)",
)


@asynccontextmanager
async def opened_status(path: str) -> AsyncIterator[tuple[QueueBackend, ScheduleBoard]]:
    """The queue, opened as ``taskhub jobs`` opens it, and the schedules beside it."""
    async with opened_hub(path) as (hub, queue):
        settings = hub.settings
        board = ScheduleBoard(
            hub.connections.shared(), settings.schedules, settings.redis.key_prefix
        )
        yield queue, board


@click.command(help="show queue depth, workers, rates, recent failures and schedules")
@config_argument
@click.option(
    "--watch",
    metavar="[SECONDS]",
    type=SECONDS,
    is_flag=False,
    flag_value=DEFAULT_WATCH,
    help=f"refresh every SECONDS (default {DEFAULT_WATCH:g}) until Ctrl-C",
)
@click.option("--json", "as_json", is_flag=True, help="print JSON (one line per refresh)")
@click.option("--failures", type=int, default=5, metavar="N", help="newest dead letters shown (5)")
def status(config: str, watch: float | None, as_json: bool, failures: int) -> int:
    try:
        return asyncio.run(
            opened_run(
                opened_status, config, lambda opened: look(*opened, watch, as_json, failures)
            )
        )
    except KeyboardInterrupt:  # how --watch ends
        return 0


async def look(
    queue: QueueBackend,
    board: ScheduleBoard,
    watch: float | None,
    as_json: bool,
    failures: int,
) -> int:
    """Print the queue once, or every ``watch`` seconds until interrupted."""
    baseline: QueueSnapshot | None = None
    while True:
        snapshot = await queue.snapshot(max(failures, 0))
        schedules = await board.read()
        # Under --watch, rates are measured from the first look on.
        rates = Rates.of(snapshot, baseline)
        baseline = baseline or snapshot
        if as_json:
            line = {**queue_json(snapshot, rates), "schedules": schedules}
            sys.stdout.write(orjson.dumps(line).decode() + "\n")
        else:
            clear = CLEAR if watch is not None and sys.stdout.isatty() else ""
            sys.stdout.write(clear + render(snapshot, rates) + render_schedules(schedules))
        sys.stdout.flush()
        if watch is None:
            return 0
        await asyncio.sleep(watch)


def render(snapshot: QueueSnapshot, rates: Rates) -> str:
    lines = [f"queue {snapshot.queue!r} at {iso(snapshot.taken_at)}", ""]
    lines += columns(
        [
            ("QUEUED", "ACTIVE", "SCHEDULED", "DEAD"),
            tuple(
                str(n)
                for n in (snapshot.queued, snapshot.active, snapshot.scheduled, snapshot.dead)
            ),
        ]
    )
    lines.append(f"fairness: {snapshot.fairness}")
    if snapshot.fairness == "user":
        lines += top_user_lines(snapshot.top_users)
    lines.append("")
    if snapshot.workers:
        header = ("WORKER", "RUNNING", "LAST SEEN", "COMPLETE", "FAILED", "RETRIED", "UP")
        rows = [header] + [
            (
                w.worker_id,
                str(w.running),
                ago(w.last_seen, snapshot.taken_at),
                count(w.complete),
                count(w.failed),
                count(w.retried),
                "-" if w.uptime is None else f"{w.uptime:.0f} s",
            )
            for w in snapshot.workers
        ]
        lines += columns(rows)
    else:
        lines.append("no workers reporting")
    lines += ["", *rate_lines(rates), ""]
    if snapshot.recent_failures:
        lines.append(f"{snapshot.dead} dead letter(s); newest:")
        failures: list[tuple[str, ...]] = [("ID", "TASK", "FAILED AT", "ERROR")]
        failures += [
            (job.job_id, job.task, iso(job.completed_at) or "-", shorten(job.error_summary))
            for job in snapshot.recent_failures
        ]
        lines += columns(failures)
    else:
        lines.append(f"{snapshot.dead} dead letter(s)")
    return "\n".join(lines) + "\n"


def top_user_lines(top: list[tuple[str, int]]) -> list[str]:
    """The users holding the most queued jobs: the backlogs fairness shares out."""
    if not top:
        return ["no user has queued jobs"]
    return ["users with the most queued jobs:", *columns([("USER", "QUEUED"), *top_rows(top)])]


def top_rows(top: list[tuple[str, int]]) -> list[tuple[str, str]]:
    return [(shorten(user), str(queued)) for user, queued in top]


def render_schedules(schedules: list[ScheduleJson]) -> str:
    """Each schedule's next run and last queued tick (UTC); nothing without schedules."""
    if not schedules:
        return ""
    header = ("SCHEDULE", "TASK", "EVERY", "NEXT RUN", "LAST TICK", "LAST JOB")
    rows: list[tuple[str, ...]] = [header]
    rows += [
        (
            s["name"],
            s["task"],
            s["every"] if s["tz"] == "UTC" else f"{s['every']} ({s['tz']})",
            s["next_run"] or "-",
            s["last_tick"] or "-",
            s["last_job_id"] or "-",
        )
        for s in schedules
    ]
    return "\n".join(["", *columns(rows)]) + "\n"


def rate_lines(rates: Rates) -> list[str]:
    if rates.completed is None:
        return [f"rates: - ({rates.basis})"]
    return [
        f"rates: {rates.completed:.2f} completed/s, {rates.failed or 0:.2f} failed/s "
        f"(out of attempts), {rates.retried or 0:.2f} retried/s",
        f"       ({rates.basis}; workers report their counters every 10 s)",
    ]


def count(value: int | None) -> str:
    return "-" if value is None else str(value)


def ago(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "-"
    return f"{max(0.0, (now - moment).total_seconds()):.0f} s ago"
