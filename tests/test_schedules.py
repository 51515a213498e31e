"""``schedules:``: cron and interval ticks, config errors, and each tick queued exactly once
by however many worker processes, on the single Redis and on the cluster."""

from __future__ import annotations

import asyncio
import contextlib
import textwrap
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from taskhub.cli.main import main
from taskhub.components import QueueBackend
from taskhub.config.schedules import ScheduleSettings
from taskhub.errors import ConfigError
from taskhub.hub.kernel import Hub
from taskhub.hub.scheduler import Scheduler
from taskhub.jobs import QueueSnapshot
from taskhub.limits.policy import Outcome
from taskhub.limits.schedules import TickSubmitter, last_ticks_key, tick_job_id
from taskhub.monitoring.dashboard import Dashboard
from taskhub.monitoring.schedules import ScheduleBoard
from taskhub.monitoring.traffic import TrafficRecorder
from tests.support.backends import client_on, config_on
from tests.support.configs import ROOT, served_by, write_config
from tests.support.namespaces import Namespace
from tests.support.processes import TaskhubProcess, run_cli, wait_until

LEDGER_PLUGIN = """
import os

from taskhub import Task, TaskHandler, hookimpl


class Ledger(TaskHandler):
    name = "ledger"

    async def run(self, task: Task) -> str:
        with open(task.payload["ledger"], "a") as ledger:
            ledger.write(f"{task.job_id} {task.user_id} {os.getpid()}\\n")
        return "noted"


@hookimpl
def register_handlers(register):
    register(Ledger)
"""


def at(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def schedule(**fields: Any) -> ScheduleSettings:
    return ScheduleSettings(**{"name": "s", "task": "log_completion", "user_id": "u", **fields})


# ---------------------------------------------------------------- ticks


def test_interval_ticks_are_multiples_of_the_interval_since_the_epoch() -> None:
    hourly = schedule(interval=3600)
    now = at("2026-12-08T10:20:30+00:00")
    assert hourly.latest_tick(now) == at("2026-12-08T10:00:00+00:00")
    assert hourly.next_tick(now) == at("2026-12-08T11:00:00+00:00")
    on_the_hour = at("2026-12-08T11:00:00+00:00")
    assert hourly.latest_tick(on_the_hour) == on_the_hour  # a tick is due at its own second
    assert hourly.next_tick(on_the_hour) == on_the_hour + 3600


def test_cron_ticks_in_utc_and_in_a_time_zone() -> None:
    nightly = schedule(cron="30 2 * * *")
    now = at("2026-12-08T10:00:00+00:00")
    assert nightly.latest_tick(now) == at("2026-12-08T02:30:00+00:00")
    assert nightly.next_tick(now) == at("2026-12-09T02:30:00+00:00")
    paris = schedule(cron="30 2 * * *", tz="Europe/Paris")  # UTC+1 in December
    assert paris.next_tick(now) == at("2026-12-09T01:30:00+00:00")
    summer = at("2026-07-01T00:00:00+00:00")  # UTC+2
    assert paris.next_tick(summer) == at("2026-07-01T00:30:00+00:00")
    # Daylight saving, as croniter does it: 02:30 does not exist on 2026-03-29 in Paris
    # (it runs at 03:00 CEST), and exists twice on 2026-10-25 (it runs in each).
    assert paris.next_tick(at("2026-03-28T12:00:00+00:00")) == at("2026-03-29T01:00:00+00:00")
    autumn = paris.next_tick(at("2026-10-24T12:00:00+00:00"))
    assert autumn == at("2026-10-25T00:30:00+00:00")
    assert paris.next_tick(autumn) == at("2026-10-25T01:30:00+00:00")
    assert schedule(cron="@hourly").next_tick(now) == at("2026-12-08T11:00:00+00:00")
    tick = at("2026-12-09T02:30:00+00:00")
    assert nightly.latest_tick(tick) == tick and nightly.next_tick(tick) == tick + 86_400


def test_only_the_latest_tick_is_due_and_not_past_max_lateness() -> None:
    minutely = schedule(interval=60, max_lateness=30)
    assert minutely.due(at("2026-12-08T10:00:29+00:00")) == at("2026-12-08T10:00:00+00:00")
    assert minutely.due(at("2026-12-08T10:00:31+00:00")) is None  # too late: skipped
    daily = schedule(cron="0 0 * * *", max_lateness=7 * 86_400)
    # Three days without a worker: one tick, the latest, never the three.
    assert daily.due(at("2026-12-08T10:00:00+00:00")) == at("2026-12-08T00:00:00+00:00")


def test_a_marker_lives_as_long_as_its_tick_may_be_due_plus_a_margin() -> None:
    assert schedule(interval=1).marker_ttl(0) == 1 + 120
    assert schedule(interval=86_400, max_lateness=300).marker_ttl(0) == 300 + 120


def test_tick_job_ids_name_the_schedule_and_the_utc_time() -> None:
    assert tick_job_id("nightly", int(at("2026-12-08T02:30:00+00:00"))) == (
        "schedule.nightly.20261208T023000Z"
    )


# ---------------------------------------------------------------- config


def errors_of(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(text))
    with pytest.raises(ConfigError) as caught:
        Hub.from_file(path, env={})
    return str(caught.value)


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("cron: '61 * * * *'", "schedules[0].cron: value error, not a cron expression"),
        ("cron: '* * *'", "schedules[0].cron: value error, not a cron expression"),
        ("cron: '0 * * * *'\n    interval: 60", "give exactly one of cron and interval (both"),
        ("payload: {}", "give exactly one of cron and interval (neither"),
        ("interval: 0", "schedules[0].interval: "),
        ("interval: 99999999", "schedules[0].interval: "),
        ("interval: 5\n    tz: Mars/Olympus", "schedules[0].tz: value error, unknown time zone"),
        ("interval: 5\n    max_lateness: 0", "schedules[0].max_lateness: "),
        ("interval: 5\n    color: red", "schedules[0].color"),
    ],
)
def test_bad_schedule_entries_name_the_key(tmp_path: Path, entry: str, expected: str) -> None:
    text = f"schedules:\n  - name: s\n    task: log_completion\n    user_id: u\n    {entry}\n"
    assert expected in errors_of(tmp_path, text)


# YAML double-quoted, so the escapes are read as the characters they name.
BAD_USER_IDS = ['""', r'"a\u2028b"', r'"a\x85b"', r'"a\tb"', '"' + "u" * 257 + '"']


@pytest.mark.parametrize("user_id", BAD_USER_IDS)
def test_a_schedules_user_id_follows_the_apis_rule(tmp_path: Path, user_id: str) -> None:
    """A user id POST /task would refuse (empty, a control or line-separator character,
    over 256 characters) is refused in a schedule too: one rule for both."""
    entry = "name: s\n    task: log_completion\n    interval: 5\n    user_id: "
    assert "schedules[0].user_id: " in errors_of(tmp_path, f"schedules:\n  - {entry}{user_id}\n")


def test_unknown_task_and_duplicate_names(tmp_path: Path) -> None:
    error = errors_of(
        tmp_path,
        """\
        schedules:
          - {name: a, task: nope, user_id: u, interval: 60}
          - {name: a, task: log_completion, user_id: u, interval: 60}
        """,
    )
    assert "schedules[0].task: 'nope' is not in tasks (defined: log_completion)" in error
    assert "schedules[1].name: 'a' is already the name of schedules[0]" in error


def test_a_payload_is_checked_as_a_post_would_be(tmp_path: Path) -> None:
    text = f"""\
        plugins_dir: {ROOT / "plugins"}
        tasks: {{count_words: {{}}}}
        default_task: count_words
        schedules:
          - {{name: a, task: count_words, user_id: u, interval: 60, payload: {{words: 3}}}}
        """
    error = errors_of(tmp_path, text)
    assert "schedules[0].payload.text: Field required (task 'count_words')" in error
    assert "schedules[0].payload.words: Extra inputs are not permitted" in error
    huge = "schedules: [{name: b, task: log_completion, user_id: u, interval: 1, payload: {n: %d}}]"
    error = errors_of(tmp_path, huge % 2**70)
    assert "schedules[0].payload: value error, cannot be stored as JSON" in error


def test_taskhub_check_shows_schedules_with_their_defaults(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("schedules: [{name: a, task: log_completion, user_id: u, cron: '@daily'}]\n")
    [entry] = Hub.from_file(path, env={}).resolved()["schedules"]
    assert entry == {
        "name": "a",
        "task": "log_completion",
        "cron": "@daily",
        "interval": None,
        "tz": "UTC",
        "user_id": "u",
        "payload": None,
        "max_lateness": 300,
    }


def test_a_bad_schedule_makes_the_cli_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("schedules:\n  - {name: a, task: log_completion, user_id: u}\n")
    assert main(["check", str(path)]) == 2


# ---------------------------------------------------------------- on Redis


def hub_on(
    on: str, ns: Namespace, request: pytest.FixtureRequest, tmp_path: Path, **queue: Any
) -> Hub:
    config = config_on(on, ns, request)
    config["queue"] = {**config["queue"], **queue}
    config.pop("server")
    path = write_config(tmp_path, config)
    return Hub.from_file(path, env={})


async def queued_ids(client: aioredis.Redis, hub: Hub) -> list[str]:
    """Every job id in the queue's incomplete sets (all shards)."""
    shards = hub.shards
    ids: list[str] = []
    for shard in range(shards.count):
        keys = await client.zrange(f"saq:{shards.queue_name(shard)}:incomplete", 0, -1)
        ids += [key.decode().rsplit(":", 1)[-1] for key in keys]
    return ids


@pytest.mark.parametrize("on", ["single", "cluster"])
async def test_racing_schedulers_queue_a_tick_once_and_a_restart_does_not_again(
    on: str, ns: Namespace, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Ten schedulers (ten processes' worth) race for the same tick: one queues it. A
    fresh one (a restarted worker) finds the marker, even after the job itself is gone."""
    hub = hub_on(on, ns, request, tmp_path, shards=3 if on == "cluster" else 1)
    client = client_on(on, request)
    plan = schedule(name="report", interval=60, payload={"n": 1})
    now = at("2026-12-08T10:00:05+00:00")
    tick = int(at("2026-12-08T10:00:00+00:00"))
    prefix = hub.settings.redis.key_prefix

    def scheduler() -> Scheduler:
        submitter = TickSubmitter(client, hub.queue, hub.tasks, hub.shards, prefix)
        return Scheduler([plan], submitter, clock=lambda: now)

    try:
        racers = [scheduler() for _ in range(10)]
        await asyncio.gather(*(r.tick_once() for r in racers))
        key = tick_job_id("report", tick)
        assert await queued_ids(client, hub) == [hub.shards.job_id(key, hub.shards.place("u", key))]
        last = orjson.loads(await client.hget(last_ticks_key(prefix), "report"))
        assert last["tick"] == tick
        # The job ran and expired (ttl), its worker restarted: the tick stays done.
        for shard in range(hub.shards.count):
            name = hub.shards.queue_name(shard)
            await client.delete(f"saq:{name}:incomplete", f"saq:{name}:queued")
        submitter = TickSubmitter(client, hub.queue, hub.tasks, hub.shards, prefix)
        assert await submitter.submit(plan, tick) is Outcome.DUPLICATE
        await scheduler().tick_once()
        assert await queued_ids(client, hub) == []
        # The next tick is queued, by one of them.
        now += 60
        await asyncio.gather(*(r.tick_once() for r in racers))
        assert len(await queued_ids(client, hub)) == 1
    finally:
        await clean_up(on, client, ns, prefix)


@pytest.mark.parametrize("on", ["single", "cluster"])
async def test_a_tick_whose_reply_was_lost_is_recorded_once_found_done(
    on: str, ns: Namespace, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """The tick's script runs but its reply is lost (a dropped connection): the tick is
    pending, tried again, found done, and recorded then for ``taskhub status``. Before,
    only the process that queued it recorded it, so the record was lost with the reply.
    A record is never replaced by an older tick's."""
    hub = hub_on(on, ns, request, tmp_path, shards=3 if on == "cluster" else 1)
    client = client_on(on, request)
    plan = schedule(name="report", interval=60, payload={"n": 1})
    tick = int(at("2026-12-08T10:00:00+00:00"))
    prefix = hub.settings.redis.key_prefix
    submitter = TickSubmitter(client, hub.queue, hub.tasks, hub.shards, prefix)
    script, lost = submitter._script, []

    async def reply_lost(**kwargs: Any) -> Any:
        result = await script(**kwargs)
        if not lost:
            lost.append(result)
            raise RedisConnectionError("Connection closed by server.")
        return result

    submitter._script = reply_lost  # type: ignore[assignment]
    scheduler = Scheduler([plan], submitter, clock=lambda: tick + 5)
    try:
        assert await scheduler.tick_once() is True  # pending: it does not know
        assert lost and await client.hget(last_ticks_key(prefix), "report") is None
        assert await scheduler.tick_once() is False  # a duplicate now: recorded
        key = tick_job_id("report", tick)
        job_id = hub.shards.job_id(key, hub.shards.place("u", key))
        assert await queued_ids(client, hub) == [job_id]
        last = orjson.loads(await client.hget(last_ticks_key(prefix), "report"))
        assert (last["tick"], last["job_id"]) == (tick, job_id)
        await submitter._record("report", tick - 60, "an-older-tick")
        last = orjson.loads(await client.hget(last_ticks_key(prefix), "report"))
        assert last["tick"] == tick
    finally:
        await clean_up(on, client, ns, prefix)


async def clean_up(on: str, client: aioredis.Redis, ns: Namespace, prefix: str) -> None:
    """Remove what a test wrote (the namespace's keys on the cluster; on the shared
    Redis, the one key outside it) and close its client."""
    if on == "cluster":
        for key in await cluster_keys(client, ns):
            await client.delete(key)
    else:
        await client.delete(last_ticks_key(prefix))
    await client.aclose()


async def cluster_keys(client: aioredis.Redis, ns: Namespace) -> list[bytes]:
    found: list[bytes] = []
    for pattern in ns.patterns:
        found += [key async for key in client.scan_iter(match=pattern, count=1000)]
    return found


@pytest.mark.parametrize("on", ["single", "cluster"])
async def test_a_full_queue_refuses_a_tick_until_there_is_room(
    on: str, ns: Namespace, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    hub = hub_on(on, ns, request, tmp_path, max_depth=1)
    client = client_on(on, request)
    prefix = hub.settings.redis.key_prefix
    submitter = TickSubmitter(client, hub.queue, hub.tasks, hub.shards, prefix)
    plan = schedule(interval=60)
    try:
        assert await submitter.submit(plan, 0) is Outcome.ADMITTED
        assert await submitter.submit(plan, 60) is Outcome.FULL
        assert await submitter.submit(plan, 60) is Outcome.FULL  # nothing marked
        await client.delete(f"saq:{hub.shards.queue_name(0)}:incomplete")
        assert await submitter.submit(plan, 60) is Outcome.ADMITTED
    finally:
        for key in await cluster_keys(client, ns) if on == "cluster" else []:
            await client.delete(key)
        if on == "single":
            await client.delete(last_ticks_key(prefix))
        await client.aclose()


class StillQueue(QueueBackend):
    name = "still"

    def __init__(self) -> None:
        pass

    async def snapshot(self, failures: int = 5) -> QueueSnapshot:
        return QueueSnapshot("q", datetime.now(UTC), 0, 0, 0, 0)


async def test_the_dashboard_summary_shows_next_runs_and_last_ticks(
    client: aioredis.Redis, ns: Namespace
) -> None:
    now = at("2026-12-08T10:20:30+00:00")
    plans = [
        schedule(name="hourly", interval=3600),
        schedule(name="paris", cron="0 3 * * *", tz="Europe/Paris"),
    ]
    last = {"tick": int(at("2026-12-08T10:00:00+00:00")), "job_id": "j", "queued_at": now}
    await client.hset(last_ticks_key(ns.prefix), "hourly", orjson.dumps(last))
    board = ScheduleBoard(client, plans, ns.prefix, clock=lambda: now)
    traffic = TrafficRecorder(client, ns.prefix, [])
    summary = await Dashboard(traffic, StillQueue(), schedules=board).summary()
    assert summary["schedules"] == [
        {
            "name": "hourly",
            "task": "log_completion",
            "user_id": "u",
            "every": "every 3600 s",
            "tz": "UTC",
            "next_run": "2026-12-08T11:00:00.000Z",
            "last_tick": "2026-12-08T10:00:00.000Z",
            "last_job_id": "j",
        },
        {
            "name": "paris",
            "task": "log_completion",
            "user_id": "u",
            "every": "0 3 * * *",
            "tz": "Europe/Paris",
            "next_run": "2026-12-09T02:00:00.000Z",
            "last_tick": None,
            "last_job_id": None,
        },
    ]
    assert (await Dashboard(traffic, StillQueue()).summary())["schedules"] == []


# ---------------------------------------------------------------- processes


@pytest.mark.servers("sanic")
@pytest.mark.parametrize("on", ["single", "cluster"])
def test_three_worker_processes_queue_each_tick_of_a_1s_schedule_once(
    tmp_path: Path, ns: Namespace, on: str, request: pytest.FixtureRequest, server_type: str
) -> None:
    """Two ``taskhub worker`` processes and a ``taskhub run`` (server and worker), a
    schedule every second, for several seconds: every tick's job was queued by one
    process and ran once, whichever queued or ran it."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "ledger.py").write_text(LEDGER_PLUGIN)
    ledger = tmp_path / "ledger.txt"
    config = served_by(config_on(on, ns, request), server_type)
    config.update(
        plugins_dir=str(plugins),
        # ttl -1: a job is gone once it completes, so only the marker stops a second run.
        queue={**config["queue"], "shards": 3 if on == "cluster" else 1, "ttl": -1},
        tasks={"ledger": {}},
        default_task="ledger",
        sinks=[],
        schedules=[
            {
                "name": "beat",
                "task": "ledger",
                "user_id": "cron",
                "interval": 1,
                "payload": {"ledger": str(ledger)},
            },
        ],
    )
    path = write_config(tmp_path, config)
    workers: list[TaskhubProcess] = []

    def ticks() -> Counter[str]:
        if not ledger.exists():
            return Counter()
        return Counter(line.split()[0] for line in ledger.read_text().splitlines())

    try:
        for number in range(2):
            directory = tmp_path / f"worker-{number}"
            directory.mkdir()
            workers.append(TaskhubProcess(["worker", str(path)], cwd=directory))
            workers[-1].start("queue: ")
        workers.append(TaskhubProcess(["run", str(path)], cwd=tmp_path))
        workers[-1].start("listening on ")
        started = len(ticks())
        assert wait_until(lambda: len(ticks()) >= started + 5, 60, 0.2), [w.output for w in workers]
    finally:
        for worker in workers:
            with contextlib.suppress(AssertionError):
                worker.stop(timeout=15)
            worker.kill()
    runs = ticks()
    assert runs and all(count == 1 for count in runs.values()), runs
    assert all(job.startswith("schedule.beat.") for job in runs)
    # Each tick was queued by exactly one of the three (its log line), and every queued
    # tick ran; which worker queued or ran one does not matter.
    queued = Counter(
        line.rsplit(" ", 1)[-1]
        for worker in workers
        for line in worker.lines
        if "schedule beat: queued " in line
    )
    assert queued and all(count == 1 for count in queued.values()), queued
    assert set(runs) <= set(queued)
    seconds = sorted(int(job.split(".")[-1][9:15]) for job in queued)  # HHMMSS
    schedulers = sum("scheduler: 1 schedule(s)" in x for w in workers for x in w.lines)
    assert schedulers == 3, [w.output for w in workers]  # one in each worker process
    queuers = sum(1 for w in workers if any("schedule beat: queued" in x for x in w.lines))
    runners = {line.split()[2] for line in ledger.read_text().splitlines()}
    print(
        f"{len(queued)} ticks ({seconds[0]}..{seconds[-1]} UTC), queued by {queuers} "
        f"and run by {len(runners)} of the 3 processes"
    )
    # taskhub status shows the schedule's next run and the last tick queued.
    result = run_cli(["status", str(path), "--json"], tmp_path)
    assert result.returncode == 0, result.stderr
    [row] = orjson.loads(result.stdout)["schedules"]
    assert row["name"] == "beat" and row["every"] == "every 1 s" and row["next_run"]
    assert row["last_job_id"] == max(queued, key=lambda job: job.split(".")[-1])
    table = run_cli(["status", str(path)], tmp_path).stdout
    assert "SCHEDULE" in table and row["last_job_id"] in table
