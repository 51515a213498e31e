"""The open-loop rows: the accepted row's requests at a fixed rate (half the seed's
maximum accepted rate, unless ``--openloop-rate`` says), to taskhub on a server and to
the seed, with latency from each request's scheduled send time (``bench/openloop.py``):
what a client sees from a server that is not saturated, stalls included."""

from __future__ import annotations

import statistics
from functools import partial
from typing import Any

from bench import openloop, servers, wrk
from bench.measure import Metric, summarize
from bench.procs import BenchError
from bench.rows import (
    Bench,
    Figures,
    Load,
    http_row,
    note_cpu,
    note_missing_seed,
    running,
    seed_start,
    server_row,
)


def seed_max_rate(bench: Bench) -> float:
    """The seed's 200s per second under the accepted load: the median of its runs in
    this run's accepted rows, or else measured now (one wrk run of ``--duration``)."""
    if not bench.seed_rates:
        if bench.seed is None:
            raise BenchError(
                f"no seed to set the rate by ({bench.seed_missing}); give --openloop-rate"
            )
        directory = bench.scratch("seed-max")
        script = wrk.random_users_script(directory)
        proc, url = bench.seed_proc(directory, worker=False)
        with running(proc):
            bench.redis.flush()
            bench.load(url, script, bench.warmup)
            bench.redis.flush()
            _, figures = bench.load(url, script, bench.duration)
        bench.seed_rates.append(figures["ok_per_s"])
        bench.say(f"  seed's maximum: {figures['ok_per_s']:,.0f} 200s/s")
    return statistics.median(bench.seed_rates)


def target_rate(bench: Bench) -> float:
    """The rate of every open-loop row in this run, decided by the first of them."""
    if bench.openloop_rate is None:
        seed = seed_max_rate(bench)
        bench.openloop_rate = float(round(seed / 2))
        runs = len(bench.seed_rates)
        bench.openloop_basis = f"half the seed's {seed:,.0f} 200s/s (median of {runs} runs)"
    return bench.openloop_rate


def load_at(rate: float) -> Load:
    """The open-loop generator at ``rate`` on POST /task, as a load for http_row."""

    def load(url: str, duration: float) -> Figures:
        seconds = max(1.0, duration)
        figures = openloop.task_load(f"{url}/task", rate, seconds).as_dict()
        figures["seconds"] = seconds
        return figures

    return load


def spread(pairs: list[dict[str, Any]], key: str, side: str) -> list[float]:
    return [p[side][key] for p in pairs if p.get(side)]


def generator_note(pairs: list[dict[str, Any]]) -> str:
    """The achieved rates, the errors, and how far behind its schedule the generator
    sent (its own lag and any wait for a free connection)."""
    parts = []
    for side in ("A", "B"):
        achieved = spread(pairs, "achieved_per_s", side)
        if not achieved:
            continue
        errors = sum(spread(pairs, "errors", side)) + sum(spread(pairs, "non_2xx", side))
        lag = max(spread(pairs, "send_lag_p99_ms", side))
        backlog = max(spread(pairs, "max_backlog", side))
        parts.append(
            f"{side} achieved {min(achieved):,.0f}-{max(achieved):,.0f}/s, "
            f"{errors} errors or non-2xx, send lag p99 {lag:.2g} ms, "
            f"{backlog} waiting for a connection at most"
        )
    return "; ".join(parts)


def openloop_row(bench: Bench, server: str) -> list[Metric]:
    """taskhub on ``server`` vs the seed with PROCESS=0, both at the same fixed rate on
    ``openloop.CONNECTIONS`` keep-alive connections: p99 (target <= 0.5x the seed's),
    p50 and p99.9, A over B."""
    rate = target_rate(bench)
    row = server_row("openloop", server)
    directory = bench.scratch(f"openloop-{server}")
    start_a = partial(bench.taskhub_on, server, directory)
    pairs = http_row(bench, row, start_a, seed_start(bench, directory), load_at(rate))
    a, b = servers.label(server), "seed (PROCESS=0)"
    lines = [
        ("p99", "<=", 0.5, "p99_ms"),
        ("p50", "info", None, "p50_ms"),
        ("p99.9", "info", None, "p999_ms"),
    ]
    metrics = []
    for name, op, target, key in lines:
        metric = Metric(row, f"{name} latency, open loop", op, target, "x", a, b)
        metric.figure = f"{name} ms"
        metrics.append(summarize(metric, pairs, key, key))
    metrics[0].note = (
        f"{rate:,.0f} requests/s ({bench.openloop_basis or '--openloop-rate'}); "
        f"{generator_note(pairs)}. "
    )
    return note_missing_seed(bench, note_cpu(metrics, pairs))
