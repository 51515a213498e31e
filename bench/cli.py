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

from bench import openloop, report, servers, wrk
from bench.measure import Metric, failed, skipped
from bench.plan import DEFAULT_ROWS, ROWS, PlanError, Planned, plan
from bench.procs import BenchError, PrivateRedis
from bench.rows import Bench

ROOT = Path(__file__).resolve().parent.parent
LOCK = Path("/tmp/taskhub-bench.lock")
RESULTS = ROOT / "bench" / "results"
PUBLISHED = ROOT / "docs" / "bench.png"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    extra = [name for name in ROWS if name not in DEFAULT_ROWS]
    per_server = [name for name, row in ROWS.items() if row.per_server]
    parser.add_argument(
        "--only",
        help=f"comma-separated rows to run (default: {','.join(DEFAULT_ROWS)}; "
        f"also {','.join(extra)}); {', '.join(per_server)} run once per server, "
        "or on those named in brackets: accepted[sanic] or accepted[sanic,uvicorn]",
    )
    parser.add_argument(
        "--servers",
        help=f"comma-separated servers of the per-server rows, among {','.join(servers.SERVERS)} "
        "(default: every one this machine has)",
    )
    parser.add_argument(
        "--openloop-rate",
        type=float,
        help="requests/s of the open-loop rows (default: half the seed's maximum accepted "
        "rate, from this run's accepted rows or measured first)",
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


def server_availability() -> dict[str, str]:
    """Why each server cannot run here ("" when it can), from ``taskhub plugins`` and
    the modules installed beside this Python."""
    with tempfile.TemporaryDirectory(prefix="taskhub-bench-plugins-") as empty:
        return servers.availability(Path(sys.executable).parent / "taskhub", Path(empty))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.pairs < 1:
        print("--pairs must be at least 1")
        return 2
    if args.openloop_rate is not None and args.openloop_rate <= 0:
        print("--openloop-rate must be positive")
        return 2
    missing = server_availability()
    try:
        rows, notes = plan(args.only, args.servers, missing)
    except PlanError as exc:
        print(exc)
        return 2
    for note in notes:
        print(note, flush=True)
    wrk.wrk_binary()
    os.environ.pop("PROCESS", None)  # the seed runs its worker unless PROCESS=0
    seed, seed_missing = find_seed(args.seed)
    if seed is None:
        print(f"seed baseline missing: {seed_missing}", flush=True)
    with bench_lock():
        return run(args, rows, seed, seed_missing, missing)


def run_row(bench: Bench, item: Planned) -> list[Metric]:
    if item.skip:
        print(f"  [{item.label}] not run: {item.skip}", flush=True)
        return [skipped(item.label, item.skip)]
    row = ROWS[item.row]
    return row.run(bench, item.server) if row.per_server else row.run(bench)


def run(
    args: argparse.Namespace,
    rows: list[Planned],
    seed: list[str] | None,
    seed_missing: str,
    missing: dict[str, str],
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
            openloop_rate=args.openloop_rate,
        )
        print(f"private redis-server on port {redis.port}; scratch {work}", flush=True)
        for item in rows:
            row, row_started = item.label, time.monotonic()
            print(f"== {row}", flush=True)
            try:
                metrics += run_row(bench, item)
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
            "servers": {name: reason or "available" for name, reason in missing.items()},
            "openloop_rate": bench.openloop_rate,
            "openloop_basis": bench.openloop_basis,
            "openloop_connections": openloop.CONNECTIONS,
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
