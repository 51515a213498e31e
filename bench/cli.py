"""``python -m bench``: run the rows, print the table, write JSON and a chart.

Every benchmark on this machine holds ``/tmp/taskhub-bench.lock``: ``make bench``
takes it with flock(1) and sets TASKHUB_BENCH_LOCKED; run directly, the harness takes
it itself.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import report, wrk
from bench.measure import Metric, failed
from bench.procs import BenchError, PrivateRedis
from bench.rows import ROWS, Bench
from bench.scale import scale

# Rows run only when named with --only: the scale row starts its own Redis Cluster and
# answers another question (how taskhub grows with processes, not how it compares).
EXTRA_ROWS = {"scale": scale}
ALL_ROWS = {**ROWS, **EXTRA_ROWS}

ROOT = Path(__file__).resolve().parent.parent
LOCK = Path("/tmp/taskhub-bench.lock")
RESULTS = ROOT / "bench" / "results"
PUBLISHED = ROOT / "docs" / "bench.png"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--only",
        help=f"comma-separated rows to run (default: {','.join(ROWS)}; "
        f"also {','.join(EXTRA_ROWS)})",
    )
    parser.add_argument("--pairs", type=int, default=3, help="A/B pairs per row (default 3)")
    parser.add_argument(
        "--duration", type=float, default=8, help="seconds of each measured wrk run (default 8)"
    )
    parser.add_argument(
        "--warmup", type=float, default=2, help="seconds of wrk before measuring (default 2)"
    )
    parser.add_argument(
        "--e2e-duration", type=float, default=30, help="seconds of load in the e2e row (30)"
    )
    parser.add_argument(
        "--drain-jobs", type=int, default=10_000, help="jobs in the drain row (10000)"
    )
    parser.add_argument(
        "--users",
        type=int,
        default=1_000_000,
        help="distinct users in the memory row (default 1000000)",
    )
    parser.add_argument(
        "--seed",
        help="command that starts the seed (default: ../shared/seed-reference/start.sh "
        "from the repo root)",
    )
    parser.add_argument("--redis-port", type=int, help="port of the private redis-server")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where latest.json/png go")
    parser.add_argument(
        "--publish", action="store_true", help=f"copy the chart to {PUBLISHED.relative_to(ROOT)}"
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="after each HTTP row, profile taskhub under the same load with py-spy "
        "(writes profile-<row>.txt beside the results)",
    )
    return parser


def find_seed(flag: str | None) -> tuple[list[str] | None, str]:
    if flag:
        return shlex.split(flag), ""
    start = ROOT.parent / "shared" / "seed-reference" / "start.sh"
    if not start.exists():
        return None, f"{start} not found (give --seed CMD)"
    if shutil.which("node") is None:
        return None, "node is not installed"
    return [str(start)], ""


@contextlib.contextmanager
def bench_lock() -> Iterator[None]:
    """Hold the machine's benchmark lock, unless make already took it for us."""
    if os.environ.get("TASKHUB_BENCH_LOCKED"):
        yield
        return
    with LOCK.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for {LOCK} (another benchmark is running)", flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def git_commit() -> str:
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    dirty = subprocess.run(
        ["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, check=False
    )
    return done.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rows = list(ROWS) if not args.only else [r.strip() for r in args.only.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ALL_ROWS]
    if unknown:
        print(f"unknown row(s): {', '.join(unknown)}; choose from {', '.join(ALL_ROWS)}")
        return 2
    if args.pairs < 1:
        print("--pairs must be at least 1")
        return 2
    wrk.wrk_binary()
    os.environ.pop("PROCESS", None)  # the seed runs its worker unless PROCESS=0
    seed, seed_missing = find_seed(args.seed)
    if seed is None:
        print(f"seed baseline missing: {seed_missing}", flush=True)
    with bench_lock():
        return run(args, rows, seed, seed_missing)


def run(
    args: argparse.Namespace, rows: list[str], seed: list[str] | None, seed_missing: str
) -> int:
    started = time.monotonic()
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    work = Path(tempfile.mkdtemp(prefix="taskhub-bench-"))
    metrics: list[Metric] = []
    timings: dict[str, float] = {}
    redis: PrivateRedis | None = None
    try:
        redis = PrivateRedis(work, args.redis_port)
        bench = Bench(
            root=ROOT,
            work=work,
            redis=redis,
            seed=seed,
            seed_missing=seed_missing,
            duration=args.duration,
            pairs=args.pairs,
            warmup=args.warmup,
            e2e_duration=args.e2e_duration,
            drain_jobs=args.drain_jobs,
            memory_users=args.users,
            profile_to=args.out if args.profile else None,
        )
        print(f"private redis-server on port {redis.port}; scratch {work}", flush=True)
        for row in rows:
            row_started = time.monotonic()
            print(f"== {row}", flush=True)
            try:
                metrics += ALL_ROWS[row](bench)
            except BenchError as exc:
                print(f"  [{row}] failed: {exc}", flush=True)
                metrics.append(failed(row, str(exc)))
            except Exception as exc:  # a bug in one row must not lose the others
                traceback.print_exc()
                metrics.append(failed(row, f"{type(exc).__name__}: {exc}"))
            timings[row] = round(time.monotonic() - row_started, 1)
            print(f"  [{row}] {timings[row]:.0f} s", flush=True)
    finally:
        if redis is not None:
            redis.stop()
        if args.keep:
            print(f"scratch kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    elapsed = time.monotonic() - started
    meta: dict[str, Any] = {
        "started": started_at,
        "elapsed_s": round(elapsed, 1),
        "row_seconds": timings,
        "commit": git_commit(),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": sys.version.split()[0],
        },
        "settings": {
            "pairs": args.pairs,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "e2e_duration_s": args.e2e_duration,
            "drain_jobs": args.drain_jobs,
            "memory_users": args.users,
            "wrk": f"-t{wrk.THREADS} -c{wrk.CONNECTIONS} --latency",
            "seed": seed or seed_missing,
        },
    }
    print()
    print(report.table(metrics))
    print(f"\ntotal {elapsed / 60:.1f} min")
    args.out.mkdir(parents=True, exist_ok=True)
    report.write_json(args.out / "latest.json", meta, metrics)
    print(f"raw figures: {args.out / 'latest.json'}")
    title = f"taskhub vs baselines, {meta['commit']}, {started_at}, {os.cpu_count()} CPUs"
    png = args.out / "latest.png"
    if report.chart(png, metrics, title):
        print(f"chart: {png}")
        if args.publish:
            PUBLISHED.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(png, PUBLISHED)
            print(f"published: {PUBLISHED}")
    return 0
