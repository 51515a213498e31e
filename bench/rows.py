"""The rows of the table: each measures two systems side by side (A = taskhub, B = the
baseline), alternating which goes first, on the private Redis, emptied before every run.
"""

from __future__ import annotations

import contextlib
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import redis

from bench import configs, otlp, profile, servers, wrk
from bench.enqueue import enqueue_jobs
from bench.measure import Metric, WrkResult, pair_order, summarize
from bench.procs import BenchError, PrivateRedis, Proc, rss_kib
from bench.profile import CpuShares
from bench.watch import LogWatcher, RssSampler
from tests.support.processes import free_port

Figures = dict[str, Any]
Runner = Callable[[], Figures]
Load = Callable[[str, float], Figures]  # (server URL, seconds) -> figures of one run
Start = Callable[[], tuple[Proc, str]]

TASKHUB = "taskhub"
SEED = "seed"
# How long the end-to-end row waits, after the load, for the log to stop growing.
QUIET = 2.0
DRAIN_RE = re.compile(r"drained (\d+) jobs in ([\d.]+) s: (\d+) jobs/s")


# Set by `make bench`: the alternative row's own interpreter.
ALTERNATIVE_PYTHON = "TASKHUB_BENCH_ALTERNATIVE_PYTHON"


@dataclass
class Bench:
    root: Path
    work: Path
    redis: PrivateRedis
    seed: list[str] | None  # the seed's start.sh command, None when not found
    seed_missing: str  # why, when it is None
    duration: float = 8.0
    pairs: int = 3
    warmup: float = 2.0
    e2e_duration: float = 30.0
    drain_jobs: int = 10_000
    memory_users: int = 1_000_000
    profile_to: Path | None = None  # where py-spy profiles of the HTTP rows go, if anywhere
    openloop_rate: float | None = None  # the open-loop rows' rate; None: half the seed's
    openloop_basis: str = ""  # how that rate was chosen, when the harness chose it
    python: Path = field(default_factory=lambda: Path(sys.executable))
    # The seed's 200s/s in each accepted pair of this run: its maximum accepted rate.
    seed_rates: list[float] = field(default_factory=list)
    _runs: int = 0

    @property
    def taskhub(self) -> Path:
        return self.python.parent / "taskhub"

    def say(self, text: str) -> None:
        print(text, flush=True)

    def scratch(self, name: str) -> Path:
        """A fresh directory for one run's config, logs and task.log."""
        self._runs += 1
        path = self.work / f"{self._runs:03d}-{name}"
        path.mkdir()
        return path

    # ----------------------------------------------------------------- processes

    def taskhub_proc(
        self,
        command: str,
        directory: Path,
        *,
        capacity: int = 20,
        ready: bool = True,
        server: str = servers.DEFAULT,
        traced_to: str | None = None,
    ) -> tuple[Proc, str]:
        """``taskhub serve|run|worker CONFIG`` in ``directory`` (task.log goes there),
        with the server plugin ``server``; with tracing on, exporting over OTLP/HTTP to
        ``traced_to``, when given."""
        port = free_port()
        settings = configs.config(
            self.redis.url,
            port,
            directory / "task.log",
            capacity=capacity,
            server=server,
            tracing=traced_to is not None,
        )
        config = configs.write(directory / "config.yaml", settings, self.taskhub)
        proc = Proc(
            f"taskhub {command}",
            [str(self.taskhub), command, str(config)],
            directory / f"taskhub-{command}.log",
            cwd=directory,
            env=otlp.environment(traced_to) if traced_to is not None else None,
        )
        url = f"http://127.0.0.1:{port}"
        if ready:
            proc.wait_ready(f"{url}/health")
        return proc, url

    def taskhub_on(
        self, server: str, directory: Path, traced_to: str | None = None
    ) -> tuple[Proc, str]:
        """taskhub's server role on ``server``: ``taskhub serve`` with that server plugin,
        or taskhub's ASGI app (``bench/asgi_app.py``) under that ASGI server; traced to
        an OTLP/HTTP endpoint when ``traced_to`` is given."""
        if server in servers.PLUGINS:
            return self.taskhub_proc("serve", directory, server=server, traced_to=traced_to)
        settings = configs.config(
            self.redis.url, 0, directory / "task.log", tracing=traced_to is not None
        )
        config = configs.write(directory / "config.yaml", settings, self.taskhub)
        args = servers.asgi_command(server, servers.TASKHUB_ASGI, "{port}")
        env = {"TASKHUB_CONFIG": str(config)}
        if traced_to is not None:
            env.update(otlp.environment(traced_to))
        return self.python_proc(f"taskhub-{server}", args, directory, env)

    def ceiling_proc(self, server: str, directory: Path) -> tuple[Proc, str]:
        """``server`` answering taskhub's refusal as a constant (``bench/ceiling.py``)."""
        if server in servers.PLUGINS:
            args = ["-m", "bench.ceiling", server, "{port}"]
        else:
            args = servers.asgi_command(server, servers.CEILING_ASGI, "{port}")
        return self.python_proc(f"ceiling-{server}", args, directory)

    def seed_env(self, port: int, task_log: Path, *, worker: bool) -> dict[str, str]:
        # The seed runs its worker unless PROCESS=0 (the harness unsets PROCESS at start).
        env = {"PORT": str(port), "REDIS_URL": self.redis.url, "TASK_LOG": str(task_log)}
        if not worker:
            env["PROCESS"] = "0"
        return env

    def seed_proc(self, directory: Path, *, worker: bool) -> tuple[Proc, str]:
        """The seed (Express + bull + rate-limiter-flexible), with its in-process worker
        or without (``PROCESS=0``)."""
        assert self.seed is not None
        port = free_port()
        env = self.seed_env(port, directory / "task.log", worker=worker)
        proc = Proc("seed", self.seed, directory / "seed.log", cwd=directory, env=env)
        proc.wait_ready(port, timeout=120)  # start.sh may run npm install the first time
        return proc, f"http://127.0.0.1:{port}"

    def python_proc(
        self,
        name: str,
        args: list[str],
        directory: Path,
        env: dict[str, str] | None = None,
        python: Path | None = None,
    ) -> tuple[Proc, str]:
        port = free_port()
        proc = Proc(
            name,
            [str(python or self.python), *[a.replace("{port}", str(port)) for a in args]],
            directory / f"{name}.log",
            cwd=self.root,
            env=env,
        )
        url = f"http://127.0.0.1:{port}"
        proc.wait_ready(f"{url}/health")
        return proc, url

    # ----------------------------------------------------------------- load

    def load(self, url: str, script: Path, duration: float) -> tuple[WrkResult, Figures]:
        result, _ = wrk.run(f"{url}/task", script, duration)
        figures = result.as_dict()
        figures["ok_per_s"] = result.ok / result.seconds if result.seconds else 0.0
        return result, figures

    def wrk_load(self, script: Path) -> Load:
        """wrk with ``script`` on POST /task, as a load for :func:`http_row`."""
        return lambda url, duration: self.load(url, script, duration)[1]

    def pairs_of(self, row: str, runners: dict[str, Runner | None]) -> list[dict[str, Any]]:
        """Run A and B ``pairs`` times, A first in even pairs and B first in odd ones."""
        pairs: list[dict[str, Any]] = []
        for index in range(self.pairs):
            order = pair_order(index)
            pair: dict[str, Any] = {"pair": index + 1, "order": list(order)}
            for side in order:
                runner = runners.get(side)
                pair[side] = runner() if runner is not None else None
            pairs.append(pair)
            self.say(f"  [{row}] pair {index + 1}/{self.pairs}: {brief(pair)}")
        return pairs


def brief(pair: dict[str, Any]) -> str:
    parts = []
    for side in ("A", "B"):
        figures = pair.get(side)
        if not figures:
            parts.append(f"{side} -")
            continue
        shown = [
            f"{key}={figures[key]:.5g}"
            for key in ("ok_per_s", "requests_per_s", "p99_ms", "jobs_per_s", "completed_per_s")
            if isinstance(figures.get(key), int | float)
        ]
        parts.append(f"{side} " + " ".join(shown))
    return " | ".join(parts)


@contextlib.contextmanager
def running(*procs: Proc) -> Iterator[None]:
    try:
        yield
    finally:
        for proc in procs:
            proc.stop()


# --------------------------------------------------------------------- HTTP rows


def http_row(
    bench: Bench,
    row: str,
    start_a: Start,
    start_b: Start | None,
    load: Load,
) -> list[dict[str, Any]]:
    """Start A and B once (one server process each), warm each up, then measure pairs
    of ``load`` runs (wrk, or the open-loop generator) with the private Redis emptied
    before every run."""
    procs: dict[str, Proc] = {}
    try:
        urls: dict[str, str] = {}
        for side, start in (("A", start_a), ("B", start_b)):
            if start is None:
                continue
            proc, url = start()
            procs[side] = proc
            urls[side] = url
            bench.redis.flush()
            load(url, bench.warmup)

        def measure(side: str) -> Runner:
            def run() -> Figures:
                bench.redis.flush()
                server = profile.process_tree(procs[side].pid)  # granian has a worker process
                shares = CpuShares({"server": server, "redis": bench.redis.proc.pid})
                figures = load(urls[side], bench.duration)
                figures["cpu_pct"] = shares.done(figures.get("seconds") or bench.duration)
                return figures

            return run

        pairs = bench.pairs_of(row, {side: measure(side) for side in urls})
        if bench.profile_to is not None and "A" in urls:
            profile_server(bench, row, procs["A"], urls["A"], load)
        return pairs
    finally:
        for proc in procs.values():
            proc.stop()


def profile_server(bench: Bench, row: str, proc: Proc, url: str, load: Load) -> None:
    """One more run of A's load with py-spy sampling the server; its summary is saved
    beside the results as ``profile-<row>.txt``."""
    assert bench.profile_to is not None
    if profile.py_spy() is None:
        bench.say(f"  [{row}] no profile: py-spy is not installed (pip install py-spy)")
        return
    raw = bench.scratch(f"profile-{row}") / "stacks.txt"
    bench.redis.flush()
    sampler = profile.record(proc.pid, bench.duration - 1, raw)
    load(url, bench.duration)
    sampler.wait(30)
    bench.profile_to.mkdir(parents=True, exist_ok=True)
    summary = bench.profile_to / f"profile-{row}.txt"
    summary.write_text(profile.summarize(raw) + "\n")
    bench.say(f"  [{row}] profile of taskhub: {summary}")


def server_row(name: str, server: str) -> str:
    """A row's name in the table: ``accepted[sanic]``."""
    return f"{name}[{server}]"


def rate_and_p99(
    row: str,
    a: str,
    b: str,
    pairs: list[dict[str, Any]],
    rate_target: float | None,
    p99_target: float | None,
) -> list[Metric]:
    """The accepted load's two lines: 200s per second and wrk's p99, A over B (a target
    of None: information only)."""
    rate = Metric(row, "requests/s (200s)", ">=", rate_target, "x", a, b, figure="200s/s")
    p99 = Metric(row, "p99 latency", "<=", p99_target, "x", a, b, figure="p99 ms")
    for metric, target in ((rate, rate_target), (p99, p99_target)):
        if target is None:
            metric.op = "info"
    metrics = [
        summarize(rate, pairs, "ok_per_s", "ok_per_s"),
        summarize(p99, pairs, "p99_ms", "p99_ms"),
    ]
    return note_cpu(note_non_2xx(metrics, pairs), pairs)


def seed_start(bench: Bench, directory: Path) -> Start | None:
    """The seed without its worker (``PROCESS=0``), when the seed is there."""
    if bench.seed is None:
        return None
    return partial(bench.seed_proc, directory, worker=False)


def accepted(bench: Bench, server: str) -> list[Metric]:
    """``wrk -t1 -c32`` POST /task for users drawn among 1M: taskhub on ``server`` vs
    the seed with PROCESS=0 (no worker in either; both queues grow). The figure is 2xx
    answers per second (``ok_per_s``; all are 200 unless wrk counts non-2xx), and wrk's
    p99. The seed's figures are kept as its maximum rate, for the open-loop rows."""
    row = server_row("accepted", server)
    directory = bench.scratch(f"accepted-{server}")
    load = bench.wrk_load(wrk.random_users_script(directory))
    start_a = partial(bench.taskhub_on, server, directory)
    pairs = http_row(bench, row, start_a, seed_start(bench, directory), load)
    bench.seed_rates += [p["B"]["ok_per_s"] for p in pairs if p.get("B")]
    metrics = rate_and_p99(row, servers.label(server), "seed (PROCESS=0)", pairs, 4.0, 0.5)
    return note_missing_seed(bench, metrics)


def alternative_python() -> Path:
    """The alternative stack's own interpreter (``make bench`` makes it; arq pins redis-py
    below 6, so it cannot share taskhub's environment)."""
    given = os.environ.get(ALTERNATIVE_PYTHON)
    if not given:
        raise BenchError(
            f"the alternative row needs its own environment: run it through `make bench`, "
            f"or set {ALTERNATIVE_PYTHON} to a python with bench/alternative/requirements.txt"
        )
    return Path(given).absolute()


def alternative(bench: Bench) -> list[Metric]:
    """The same load as ``accepted`` against Starlette + limits + arq under uvicorn
    (one worker): taskhub's ratio against what a Python user would pick instead."""
    directory = bench.scratch("alternative")
    args = servers.asgi_command("uvicorn", "bench.alternative.app:app", "{port}")
    python = alternative_python()
    env = {"REDIS_URL": bench.redis.url}
    pairs = http_row(
        bench,
        "alternative",
        lambda: bench.taskhub_proc("serve", directory),
        lambda: bench.python_proc("alternative", args, directory, env, python),
        bench.wrk_load(wrk.random_users_script(directory)),
    )
    return rate_and_p99("alternative", "taskhub serve", "starlette+limits+arq", pairs, None, None)


def refusals(
    bench: Bench,
    row: str,
    server: str,
    directory: Path,
    start_b: Start,
    b_label: str,
    target: float | None,
    *,
    start_a: Start | None = None,
    a_label: str | None = None,
) -> list[Metric]:
    """Every request for one user (after its first 20, refused: taskhub's deny cache
    answers them without Redis), taskhub on ``server`` (or ``start_a``) against
    ``start_b``: all responses per second, A over B."""
    load = bench.wrk_load(wrk.one_user_script(directory))
    start_a = start_a or partial(bench.taskhub_on, server, directory)
    pairs = http_row(bench, row, start_a, start_b, load)
    op = "info" if target is None else ">="
    a_label = a_label or servers.label(server)
    metric = Metric(row, "requests/s (429s)", op, target, "x", a_label, b_label)
    metric.figure = "req/s"
    summarize(metric, pairs, "requests_per_s", "requests_per_s")
    refused = [p["A"]["non_2xx"] / max(p["A"]["requests"], 1) for p in pairs if p.get("A")]
    if refused:
        metric.note = f"taskhub's answers were 429 (non-2xx) in {min(refused):.2%} or more. "
    return note_cpu([metric], pairs)


def refused(bench: Bench, server: str) -> list[Metric]:
    """The refusals of taskhub on ``server`` vs a bare Sanic endpoint that answers 429
    (``bench/bare_429.py``), one process each."""
    directory = bench.scratch(f"refused-{server}")
    args = ["-m", "bench.bare_429", "{port}"]
    start_b = partial(bench.python_proc, "bare_429", args, directory)
    row = server_row("refused", server)
    return refusals(bench, row, server, directory, start_b, "bare Sanic 429", 2.0)


def traced_sides(bench: Bench, server: str, name: str, endpoint: str) -> tuple[Path, Start, Start]:
    """A row's directory, and taskhub on ``server`` with tracing on (A, exporting every
    span to ``endpoint``) and off (B), each in a directory of its own."""
    directory = bench.scratch(f"{name}-{server}")
    on, off = directory / "on", directory / "off"
    on.mkdir()
    off.mkdir()
    start_on = partial(bench.taskhub_on, server, on, endpoint)
    return directory, start_on, partial(bench.taskhub_on, server, off)


def traced_accepted(bench: Bench, server: str) -> list[Metric]:
    """The accepted row's load on taskhub with tracing on (every span exported over
    OTLP/HTTP to a collector that drops them) against tracing off: tracing's cost."""
    row = server_row("traced_accepted", server)
    with otlp.Sink() as sink:
        directory, start_on, start_off = traced_sides(bench, server, "traced-accepted", sink.url)
        load = bench.wrk_load(wrk.random_users_script(directory))
        pairs = http_row(bench, row, start_on, start_off, load)
        note = f"spans exported: {sink.spans_note()}"
    metrics = rate_and_p99(row, "tracing on", "tracing off", pairs, None, None)
    metrics[0].note += note
    return metrics


def traced_refused(bench: Bench, server: str) -> list[Metric]:
    """The refused row's load on taskhub with tracing on against tracing off."""
    row = server_row("traced_refused", server)
    with otlp.Sink() as sink:
        directory, start_on, start_off = traced_sides(bench, server, "traced-refused", sink.url)
        metrics = refusals(
            bench,
            row,
            server,
            directory,
            start_off,
            "tracing off",
            None,
            start_a=start_on,
            a_label="tracing on",
        )
        metrics[0].note += f"spans exported: {sink.spans_note()}"
    return metrics


def ceiling(bench: Bench, server: str) -> list[Metric]:
    """The refusals of taskhub on ``server`` vs the same server answering the same
    refusal as a constant (``bench/ceiling.py``): how close taskhub comes to what that
    server can do at all."""
    directory = bench.scratch(f"ceiling-{server}")
    start_b = partial(bench.ceiling_proc, server, directory)
    row = server_row("ceiling", server)
    return refusals(bench, row, server, directory, start_b, f"{server} ceiling", None)


def note_non_2xx(metrics: list[Metric], pairs: list[dict[str, Any]]) -> list[Metric]:
    for side in ("A", "B"):
        bad = sum(p[side]["non_2xx"] + p[side]["socket_errors"] for p in pairs if p.get(side))
        if bad:
            for metric in metrics:
                metric.note += f"{side}: {bad} non-2xx/socket errors over the pairs. "
    return metrics


def note_cpu(metrics: list[Metric], pairs: list[dict[str, Any]]) -> list[Metric]:
    """Say how busy each process was (median over the pairs; 100 = one core): on two
    cores, a server near 100 is the limit, and wrk and Redis take the rest."""
    parts = []
    for side in ("A", "B"):
        shares = [p[side]["cpu_pct"] for p in pairs if p.get(side) and "cpu_pct" in p[side]]
        if shares:
            shown = ", ".join(
                f"{name} {statistics.median(s[name] for s in shares):.0f}" for name in shares[0]
            )
            parts.append(f"{side} {shown}")
    if parts and metrics:
        metrics[0].note += f"CPU % (100 = one core): {'; '.join(parts)}. "
    return metrics


def note_missing_seed(bench: Bench, metrics: list[Metric]) -> list[Metric]:
    if bench.seed is None:
        for metric in metrics:
            metric.status = "MISSING"
            metric.note = f"baseline missing: {bench.seed_missing}. " + metric.note
    return metrics


# --------------------------------------------------------------------- job drain


def drain(bench: Bench) -> list[Metric]:
    """10,000 jobs admitted through taskhub's own admission script, held back while one
    worker process (concurrency 50, file_log sink) starts and goes idle, then released
    onto the queue in one RENAME: jobs/s from the release to the 10,000th line in
    task.log. That is what ``drain.js`` times for bull (after its addBulk, with its
    worker process already up); the worker's own start-up is reported apart."""
    jobs = bench.drain_jobs
    queued, held = f"saq:{configs.QUEUE}:queued", f"saq:{configs.QUEUE}:held"

    def taskhub_drain() -> Figures:
        directory = bench.scratch("drain-taskhub")
        bench.redis.flush()
        settings = configs.config(bench.redis.url, free_port(), directory / "task.log")
        config = configs.write(directory / "config.yaml", settings, bench.taskhub)
        started = time.monotonic()
        admitted = enqueue_jobs(config, jobs)
        enqueue_s = time.monotonic() - started
        if admitted != jobs:
            raise BenchError(f"only {admitted} of {jobs} jobs were admitted")
        client = bench.redis.client
        client.rename(queued, held)
        watcher = LogWatcher(directory / "task.log")
        worker = Proc(
            "taskhub worker",
            [str(bench.taskhub), "worker", str(config)],
            directory / "taskhub-worker.log",
            cwd=directory,
        )
        try:
            idle_at = wait_idle(client, worker)
            released = time.monotonic()
            client.rename(held, queued)
            done_at = watcher.wait_lines(jobs, timeout=max(120, jobs / 50), alive=worker.alive)
        finally:
            worker.stop()
            watcher.stop()
        if done_at is None:
            raise BenchError(
                f"taskhub worker completed {watcher.lines} of {jobs}:\n{worker.tail()}"
            )
        elapsed = done_at - released
        return {
            "jobs": jobs,
            "seconds": elapsed,
            "jobs_per_s": jobs / elapsed,
            "worker_start_s": idle_at - worker.started_at,  # spawn to blocked on the queue
            "enqueue_s": enqueue_s,
            "lines": watcher.lines,
        }

    def seed_drain() -> Figures:
        assert bench.seed is not None
        directory = bench.scratch("drain-seed")
        bench.redis.flush()
        env = {
            **os.environ,
            **bench.seed_env(0, directory / "task.log", worker=True),
            "N": str(jobs),
            "CONC": str(configs.CONCURRENCY),
        }
        done = subprocess.run(
            [*bench.seed, "drain.js"],
            cwd=directory,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        match = DRAIN_RE.search(done.stdout)
        if done.returncode != 0 or match is None:
            raise BenchError(f"drain.js failed ({done.returncode}): {done.stdout}{done.stderr}")
        seconds = float(match.group(2))
        return {
            "jobs": int(match.group(1)),
            "seconds": seconds,
            "jobs_per_s": int(match.group(1)) / seconds,
            "printed": match.group(0),
        }

    runners: dict[str, Runner | None] = {
        "A": taskhub_drain,
        "B": seed_drain if bench.seed else None,
    }
    pairs = bench.pairs_of("drain", runners)
    metric = Metric(
        "drain",
        f"jobs/s ({jobs} jobs, conc {configs.CONCURRENCY})",
        ">=",
        1.5,
        "x",
        "taskhub worker",
        "bull drain.js",
        figure="jobs/s",
    )
    summarize(metric, pairs, "jobs_per_s", "jobs_per_s")
    starts = [p["A"]["worker_start_s"] for p in pairs if p.get("A")]
    if starts:
        slowest = max(starts)
        metric.note = f"taskhub worker start-up (spawn to idle, not timed) {slowest:.2f} s at most"
    return note_missing_seed(bench, [metric])


def wait_idle(client: redis.Redis, worker: Proc, timeout: float = 30) -> float:
    """Wait until the worker blocks on the empty queue: it is up, connected and idle."""
    deadline = time.monotonic() + timeout
    while not any(c.get("cmd") in ("blmove", "brpoplpush") for c in client.client_list()):
        if time.monotonic() > deadline or not worker.alive():
            raise BenchError(f"the taskhub worker did not start:\n{worker.tail()}")
        time.sleep(0.02)
    return time.monotonic()


# --------------------------------------------------------------------- end to end


def end_to_end(bench: Bench) -> list[Metric]:
    """``taskhub run`` (server and worker in one process, concurrency 50) vs the seed
    with its in-process worker, under ``e2e_duration`` s of the accepted row's load.

    completed tasks/s = C / T, where C is the number of the load's tasks in task.log
    (lines for users "u…"; the warm-up's users are "w…" and its jobs are left to finish
    first, up to 30 s), counted once the log has not grown for 2 s after the load ended,
    waiting at most ``e2e_duration`` + 2 s more; T is the time from the start of the
    load to the last growth of the log, but at least the load's duration. Work still
    queued when the wait ends is not counted (``backlog_left`` in the raw figures);
    ``completed_during_load_per_s`` counts only what completed while the load ran.
    """
    load_s = bench.e2e_duration

    def run(start: Callable[[Path], tuple[Proc, str]], name: str) -> Figures:
        directory = bench.scratch(f"e2e-{name}")
        bench.redis.flush()
        warm = wrk.random_users_script(directory, seed=2, prefix="w")
        script = wrk.random_users_script(directory, seed=1, prefix="u")
        proc, url = start(directory)
        watcher = LogWatcher(directory / "task.log", match=b" for user u")
        warm_watcher = LogWatcher(directory / "task.log", match=b" for user w")
        try:
            warm_result, _ = bench.load(url, warm, bench.warmup)
            # Let the warm-up's jobs finish first (they are not counted either way).
            warm_watcher.wait_lines(warm_result.ok, timeout=30, alive=proc.alive)
            warm_watcher.stop()
            before = watcher.lines
            load_started = time.monotonic()
            result, figures = bench.load(url, script, load_s)
            load_ended = time.monotonic()
            at_load_end = watcher.lines - before
            quiet = watcher.wait_quiet(QUIET, timeout=load_s + QUIET)
            completed = watcher.lines - before
            last = watcher.last_growth_at or load_ended
        finally:
            proc.stop()
            watcher.stop()
            warm_watcher.stop()
        elapsed = max(load_ended - load_started, last - load_started)
        figures.update(
            completed=completed,
            completed_per_s=completed / elapsed,
            completed_during_load_per_s=at_load_end / (load_ended - load_started),
            seconds_to_last_completion=last - load_started,
            drained=quiet,
            backlog_left=max(0, result.ok - completed),
        )
        return figures

    runners: dict[str, Runner | None] = {
        "A": lambda: run(lambda d: bench.taskhub_proc("run", d), TASKHUB),
        "B": (lambda: run(lambda d: bench.seed_proc(d, worker=True), SEED)) if bench.seed else None,
    }
    pairs = bench.pairs_of("e2e", runners)
    metric = Metric(
        "e2e",
        f"completed tasks/s ({load_s:g} s load)",
        ">=",
        3.0,
        "x",
        "taskhub run",
        "seed + worker",
        figure="tasks/s",
    )
    summarize(metric, pairs, "completed_per_s", "completed_per_s")
    left = {side: sum(p[side]["backlog_left"] for p in pairs if p.get(side)) for side in ("A", "B")}
    if any(left.values()):
        metric.note = f"queued but not completed when the wait ended: A {left['A']}, B {left['B']}"
    return note_missing_seed(bench, [metric])


# --------------------------------------------------------------------- memory

# Pops queued jobs and deletes them: the memory row has no worker, and without this
# the queue's million jobs would dwarf the limiter's keys in Redis.
JANITOR_LUA = """
local ids = redis.call('LPOP', KEYS[1], ARGV[1])
if not ids then return 0 end
for i = 1, #ids, 500 do
  local chunk = {}
  for j = i, math.min(i + 499, #ids) do chunk[#chunk + 1] = ids[j] end
  redis.call('DEL', unpack(chunk))
  redis.call('ZREM', KEYS[2], unpack(chunk))
end
return #ids
"""


class Janitor:
    def __init__(self, redis: PrivateRedis, interval: float = 0.25) -> None:
        self.script = redis.client.register_script(JANITOR_LUA)
        self.keys = [f"saq:{configs.QUEUE}:queued", f"saq:{configs.QUEUE}:incomplete"]
        self.interval = interval
        self.deleted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def sweep(self) -> None:
        while True:
            count = int(self.script(keys=self.keys, args=[5000]))
            self.deleted += count
            if count < 5000:
                return

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sweep()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sweep()


def limiter_keys(redis: PrivateRedis) -> list[bytes]:
    return list(redis.client.scan_iter(match=f"{configs.KEY_PREFIX}:*", count=10_000))


def ttl_check(redis: PrivateRedis, keys: list[bytes]) -> tuple[int, int]:
    """(keys checked, keys without an expiry). A key gone meanwhile counts as neither."""
    checked = without = 0
    for start in range(0, len(keys), 2000):
        pipe = redis.client.pipeline(transaction=False)
        for key in keys[start : start + 2000]:
            pipe.pttl(key)
        for ttl in pipe.execute():
            if ttl == -2:
                continue
            checked += 1
            without += ttl == -1
    return checked, without


def memory_usage(redis: PrivateRedis, keys: list[bytes], sample: int = 1000) -> float | None:
    pipe = redis.client.pipeline(transaction=False)
    for key in keys[:sample]:
        pipe.memory_usage(key, samples=0)
    sizes = [size for size in pipe.execute() if size]
    return sum(sizes) / len(sizes) if sizes else None


def memory(bench: Bench) -> list[Metric]:
    """``memory_users`` distinct users (a new user id per request, "m1", "m2", ...)
    through ``taskhub serve`` with the default limiter (a token bucket of 20/60 s: each
    user's first request is admitted, and its key expires 3 s later, once its bucket is
    full again). Server RSS (VmRSS) after a warm-up vs after the last user; every
    limiter key alive is checked for an expiry (PTTL) every 5 s during the load and all
    of them at the end. Redis bytes per active user = growth of ``used_memory`` over
    the run / limiter keys alive at the end. A janitor deletes queued jobs 4 times a
    second (no worker runs here), so the queue does not dominate Redis's memory."""
    directory = bench.scratch("memory")
    users = bench.memory_users
    proc, url = bench.taskhub_proc("serve", directory)
    marker = directory / "users.done"
    try:
        bench.load(url, wrk.random_users_script(directory, seed=3), bench.warmup)
        bench.redis.flush()
        time.sleep(0.5)
        rss_before = rss_kib(proc.pid)
        used_before = bench.redis.used_memory()
        janitor = Janitor(bench.redis)
        sampler = RssSampler(proc.pid)
        during = [0, 0]
        stop_checks = threading.Event()

        def check_during() -> None:
            while not stop_checks.wait(5):
                checked, without = ttl_check(bench.redis, limiter_keys(bench.redis)[:5000])
                during[0] += checked
                during[1] += without

        checker = threading.Thread(target=check_during, daemon=True)
        checker.start()
        script = wrk.distinct_users_script(directory, users, marker)
        try:
            result, _, elapsed = wrk.run_until_marker(
                f"{url}/task", script, marker, max_duration=max(900, users / 500)
            )
        finally:
            stop_checks.set()
            checker.join(10)
            janitor.stop()
            rss_peak = sampler.stop()
        rss_after = rss_kib(proc.pid)
        keys = limiter_keys(bench.redis)
        used_after = bench.redis.used_memory()
        checked, without = ttl_check(bench.redis, keys)
        average = memory_usage(bench.redis, keys)
        queue_left = bench.redis.client.zcard(f"saq:{configs.QUEUE}:incomplete")
    finally:
        proc.stop()
    growth_mb = (rss_after - rss_before) / 1024
    figures: Figures = {
        "users": users,
        "requests": result.requests,
        "ok": result.ok,
        "non_2xx": result.non_2xx,
        "seconds": elapsed,
        "requests_per_s": result.requests / elapsed,
        "rss_before_kib": rss_before,
        "rss_after_kib": rss_after,
        "rss_peak_kib": rss_peak,
        "rss_growth_mb": growth_mb,
        "used_memory_before": used_before,
        "used_memory_after": used_after,
        "limiter_keys_alive": len(keys),
        "ttl_checked_during": during[0],
        "ttl_missing_during": during[1],
        "ttl_checked_end": checked,
        "ttl_missing_end": without,
        "memory_usage_avg_bytes": average,
        "jobs_deleted_by_janitor": janitor.deleted,
        "jobs_left_in_queue": queue_left,
    }
    per_user = (used_after - used_before) / len(keys) if keys else None
    figures["redis_bytes_per_active_user"] = per_user
    pairs = [{"pair": 1, "order": ["A"], "A": figures, "B": None}]
    name = "taskhub serve"
    rss = Metric("memory", f"server RSS growth, {users:,} users", "<=", 50, " MB", name)
    rss.value = rss.a_value = growth_mb
    rss.figure = "MB"
    rss.pairs = pairs
    rss.note = (
        f"RSS {rss_before / 1024:.0f} -> {rss_after / 1024:.0f} MB (peak {rss_peak / 1024:.0f}); "
        f"{result.ok} of {result.requests} requests 200"
    )
    ttl = Metric("memory", "limiter keys without TTL", "<=", 0, "", name)
    ttl.value = ttl.a_value = float(during[1] + without)
    ttl.figure = "keys"
    ttl.note = f"{during[0] + checked} key checks ({checked} keys alive at the end)"
    size = Metric("memory", "Redis bytes per active user", "info", None, " B", name)
    size.value = size.a_value = per_user
    size.figure = "bytes"
    size.note = (
        f"used_memory +{(used_after - used_before) / 1024:.0f} KiB / {len(keys)} live keys; "
        f"MEMORY USAGE avg {average or 0:.0f} B; {janitor.deleted} queued jobs deleted"
    )
    return [rss, ttl, size]
