"""Drain probe: a `taskhub worker` against bull's drain.js on a private Redis, alternately.

    flock /tmp/taskhub-bench.lock .venv/bin/python bench/drain_probe.py [--pairs 3] [--n 10000]

Starts ``redis-server`` on port 6391 (no persistence) unless one answers there,
stores N jobs as admission would (``SaqQueue.prepare`` plus the enqueue
script's writes) in a staging list while the worker idles, then renames the
list onto the queue (one step, so the worker sees all N at once, as bull's
drain does after its bulk add) and times until the last job leaves
``incomplete``. Prints jobs/s for each side, Redis commands per job for
taskhub, and the median ratio.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

from taskhub.hub.kernel import Hub

ROOT = Path(__file__).resolve().parents[1]
SEED = Path(os.environ.get("SEED_REFERENCE", "/work/shared/seed-reference"))
QUEUE = "drain"
CONFIG = """
redis: {{url: "redis://127.0.0.1:{port}/0"}}
plugins_dir: null
queue: {{type: saq, name: {queue}, concurrency: {concurrency}}}
sinks: [{{type: file_log, path: "{log}"}}]
metrics: {{worker_port: 0}}
logging: {{level: WARNING}}
"""


def start_redis(port: int) -> redis.Redis:
    client = redis.Redis(port=port)
    try:
        client.ping()
    except redis.ConnectionError:
        subprocess.run(
            [
                "redis-server",
                "--port",
                str(port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "yes",
            ],
            check=True,
        )
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
    return client


def stage(client: redis.Redis, config: Path, n: int) -> None:
    """Store n jobs as the enqueue script does, listed on a staging key."""
    hub = Hub.from_file(config)
    spec = hub.tasks[hub.default_task]
    pipe = client.pipeline(transaction=False)
    for i in range(n):
        job = hub.queue.prepare(spec, f"u{i}", None)
        incomplete, key, _queued, _abort = job.keys
        pipe.set(key, job.args[0])
        pipe.zadd(incomplete, {key: 0})
        pipe.rpush(f"saq:{QUEUE}:staging", key)
        if len(pipe) >= 3000:
            pipe.execute()
    pipe.execute()


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def commandstats(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    calls = {k: v["calls"] for k, v in stats.items()}
    calls["usec"] = sum(v["usec"] for k, v in stats.items() if "eval" in k or "blmove" in k)
    return calls


def run_taskhub(
    client: redis.Redis, port: int, n: int, concurrency: int, tmp: Path, args: argparse.Namespace
) -> float:
    client.flushall()
    log = tmp / "task.log"
    log.unlink(missing_ok=True)
    config = tmp / "drain.yaml"
    config.write_text(CONFIG.format(port=port, queue=QUEUE, concurrency=concurrency, log=log))
    stage(client, config, n)
    command = [str(ROOT / ".venv/bin/taskhub"), "worker", str(config)]
    if args.profile:
        command[:1] = [sys.executable, "-m", "cProfile", "-o", args.profile, "-m", "taskhub"]
    worker = subprocess.Popen(command)
    monitor = None
    try:
        deadline = time.monotonic() + 20
        while not any(c.get("cmd") == "blmove" for c in client.client_list()):
            if time.monotonic() > deadline or worker.poll() is not None:
                raise RuntimeError("the worker did not start")
            time.sleep(0.05)
        time.sleep(0.5)  # let every process task block
        if args.monitor:
            monitor = subprocess.Popen(
                ["redis-cli", "-p", str(port), "monitor"], stdout=(tmp / "monitor").open("w")
            )
            time.sleep(0.3)
        before = commandstats(client)
        cpu = cpu_seconds(worker.pid)
        t0 = time.perf_counter()
        client.rename(f"saq:{QUEUE}:staging", f"saq:{QUEUE}:queued")
        while client.zcard(f"saq:{QUEUE}:incomplete"):
            time.sleep(0.005)
        elapsed = time.perf_counter() - t0
        cpu = cpu_seconds(worker.pid) - cpu
        after = commandstats(client)
        if monitor is not None:
            time.sleep(0.2)
            monitor.terminate()
            monitor.wait()
            trips = [line for line in (tmp / "monitor").open() if "lua]" not in line]
            trips = [ln for ln in trips if not any(c in ln.lower() for c in ('"zcard"', '"info"'))]
            kinds: dict[str, int] = {}
            for line in trips:
                name = line.split('"')[1].lower() if '"' in line else "?"
                kinds[name] = kinds.get(name, 0) + 1
            per = ", ".join(f"{k}={v / n:.2f}" for k, v in sorted(kinds.items()))
            print(f"  round trips/job {len(trips) / n:.2f}: {per}")
    finally:
        worker.terminate()
        worker.wait(15)
    lines = sum(1 for _ in log.open())
    if lines != n:
        raise RuntimeError(f"{lines} lines in task.log for {n} jobs")
    calls = {k: (after.get(k, 0) - before.get(k, 0)) / n for k in after}
    calls.pop("cmdstat_zcard", None)
    calls.pop("cmdstat_info", None)
    usec = calls.pop("usec")
    shown = ", ".join(f"{k[8:]}={v:.2f}" for k, v in sorted(calls.items()) if v >= 0.01)
    print(
        f"  taskhub: {n / elapsed:7.0f} jobs/s; worker CPU {cpu / n * 1e6:.0f} us/job; "
        f"Redis {usec:.0f} us/job in scripts; "
        f"commands/job {sum(calls.values()):.2f}: {shown}"
    )
    return n / elapsed


def run_bull(port: int, n: int, concurrency: int, tmp: Path) -> float:
    env = {
        **os.environ,
        "N": str(n),
        "CONC": str(concurrency),
        "TASK_LOG": str(tmp / "bull.log"),
        "REDIS_URL": f"redis://127.0.0.1:{port}",
    }
    out = subprocess.run(
        [str(SEED / "start.sh"), "drain.js"], env=env, check=True, capture_output=True, text=True
    ).stdout
    rate = float(out.split(":")[-1].split("jobs/s")[0])
    print(f"  bull:    {rate:7.0f} jobs/s")
    return rate


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--port", type=int, default=6391)
    parser.add_argument("--no-bull", action="store_true", help="taskhub only")
    parser.add_argument("--monitor", action="store_true", help="count round trips (slow)")
    parser.add_argument("--profile", help="cProfile the worker into this file")
    args = parser.parse_args()
    client = start_redis(args.port)
    tmp = Path(tempfile.mkdtemp(prefix="drain-probe-"))
    ratios, ours = [], []
    try:
        for i in range(args.pairs):
            print(f"pair {i + 1}:")
            mine = run_taskhub(client, args.port, args.n, args.concurrency, tmp, args)
            ours.append(mine)
            if not args.no_bull:
                client.flushall()
                ratios.append(mine / run_bull(args.port, args.n, args.concurrency, tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"taskhub median {statistics.median(ours):.0f} jobs/s", end="")
    if ratios:
        print(
            f"; ratio to bull: median {statistics.median(ratios):.2f} "
            f"({', '.join(f'{r:.2f}' for r in ratios)})"
        )
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
