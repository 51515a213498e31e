"""What waiters cost admissions: POST /task per second with none and with 1,000 clients
waiting (``GET /task/{id}?wait=30``) on jobs that never finish, on one ``taskhub serve``.

    python -m bench.waiters [--waiters 1000] [--pairs 4] [--duration 8] [--server sanic]

One private redis-server and one server process for the whole run; phases alternate
(none, waiters, waiters, none, ...) so drift and the neighbours' load fall on both
alike. In a waiters phase a child process holds ``--waiters`` connections, each
asking again whenever its wait ends; the phase's wrk run starts once every one of
them has asked. No worker runs, so the jobs waited on never settle. The figure is
the ratio of the medians (waiters / none): 1.0 is free. The server's CPU time per
admission during each wrk run is given too: less swayed by the machine's other load.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from bench import configs, wrk
from bench.procs import PrivateRedis, Proc
from bench.profile import cpu_seconds, process_tree
from tests.support.processes import free_port

READY = "ready"  # the file the holder writes once every waiter has asked


ANSWERS = [0]  # answers the holder received: ~0 in a phase when every waiter waits


async def hold_one(host: str, port: int, job_id: str, asked: asyncio.Event) -> None:
    """One client waiting on ``job_id`` for as long as the process lives."""
    reader, writer = await asyncio.open_connection(host, port)
    request = f"GET /task/{job_id}?wait=30 HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    while True:
        writer.write(request)
        await writer.drain()
        asked.set()
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        await reader.readexactly(length)
        ANSWERS[0] += 1


async def hold(url: str, job_ids: list[str], ready: Path) -> None:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    events = [asyncio.Event() for _ in job_ids]
    tasks = []
    for job_id, asked in zip(job_ids, events, strict=True):
        tasks.append(asyncio.create_task(hold_one(host, port, job_id, asked)))
        await asyncio.sleep(0)  # not all 1,000 SYNs in one burst
    await asyncio.gather(*(event.wait() for event in events))
    ready.write_text(str(len(job_ids)))
    while True:  # the parent reads the last line
        print(f"answers {ANSWERS[0]}", flush=True)
        await asyncio.sleep(0.5)


# The server's process tree, set once it runs: its CPU is read around each wrk run.
SERVER: list[int] = []


def admissions(url: str, script: Path, seconds: float) -> tuple[float, float]:
    """Admissions/s, and the server's CPU microseconds per admission."""
    cpu = sum(cpu_seconds(pid) for pid in SERVER)
    result, _ = wrk.run(url + "/task", script, seconds)
    cpu = sum(cpu_seconds(pid) for pid in SERVER) - cpu
    if result.non_2xx or result.socket_errors:
        print(f"  (wrk: {result.non_2xx} non-2xx, {result.socket_errors} socket errors)")
    return result.requests_per_s, cpu * 1e6 / max(1, result.requests)


def with_waiters(
    work: Path, url: str, job_ids: list[str], measure: float
) -> tuple[tuple[float, float], int]:
    """Admissions/s while a child process holds one waiter per job, and how many of
    the waits ended meanwhile (0: all of them waited throughout)."""
    ids = work / "jobs.json"
    ids.write_text(json.dumps(job_ids))
    ready = work / READY
    ready.unlink(missing_ok=True)
    holder = Proc(
        "waiters",
        [sys.executable, "-m", "bench.waiters", "--hold", url, str(ids), str(ready)],
        work / "holder.log",
    )
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            if not holder.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the waiters did not all ask:\n{holder.tail()}")
            time.sleep(0.1)
        time.sleep(1.0)  # the last requests reach their waits
        before = answers(holder)
        rate = admissions(url, work / "script.lua", measure)
        return rate, answers(holder) - before
    finally:
        holder.stop()


def answers(holder: Proc) -> int:
    lines = [line for line in holder.tail(5).splitlines() if line.startswith("answers ")]
    return int(lines[-1].split()[1]) if lines else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.waiters", description=__doc__)
    parser.add_argument("--waiters", type=int, default=1000)
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of each wrk run")
    parser.add_argument("--server", default="sanic", help="sanic or httptools")
    parser.add_argument("--hold", nargs=3, metavar=("URL", "JOBS", "READY"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.hold:
        url, ids, ready = args.hold
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(hold(url, json.loads(Path(ids).read_text()), Path(ready)))
        return 0

    taskhub = Path(sys.executable).parent / "taskhub"
    with tempfile.TemporaryDirectory(prefix="bench-waiters-") as tmp:
        work = Path(tmp)
        redis = PrivateRedis(work)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        settings = configs.config(redis.url, port, work / "task.log", server=args.server)
        config = configs.write(work / "config.yaml", settings, taskhub)
        server = Proc("taskhub serve", [str(taskhub), "serve", str(config)], work / "serve.log")
        try:
            server.wait_ready(url + "/health")
            with httpx.Client(base_url=url, timeout=30) as client:
                job_ids = [
                    client.post("/task", json={"user_id": f"waiter-{n}"}).json()["job_id"]
                    for n in range(args.waiters)
                ]
            wrk.random_users_script(work).rename(work / "script.lua")
            admissions(url, work / "script.lua", 2.0)  # warm-up
            SERVER[:] = process_tree(server.pid)
            rates: dict[str, list[float]] = {"none": [], "waiters": []}
            cpus: dict[str, list[float]] = {"none": [], "waiters": []}
            for pair in range(args.pairs):
                order = ("none", "waiters") if pair % 2 == 0 else ("waiters", "none")
                for phase in order:
                    note = ""
                    if phase == "none":
                        rate, cpu = admissions(url, work / "script.lua", args.duration)
                    else:
                        (rate, cpu), ended = with_waiters(work, url, job_ids, args.duration)
                        note = f" ({ended} waits ended during the run)"
                    rates[phase].append(rate)
                    cpus[phase].append(cpu)
                    line = (
                        f"pair {pair + 1} {phase:>7}: {rate:8.0f} admissions/s, "
                        f"{cpu:5.0f} us server CPU each{note}"
                    )
                    print(line, flush=True)
            none, waiting = (statistics.median(rates[k]) for k in ("none", "waiters"))
            pairs = [w / n for w, n in zip(rates["waiters"], rates["none"], strict=True)]
            print(
                f"server {args.server}: median {none:.0f} admissions/s with no waiters, "
                f"{waiting:.0f} with {args.waiters} waiters: ratio {waiting / none:.3f} "
                f"(pair by pair: median {statistics.median(pairs):.3f}, "
                f"{min(pairs):.2f} to {max(pairs):.2f}); server CPU per admission "
                f"{statistics.median(cpus['none']):.0f} us with none, "
                f"{statistics.median(cpus['waiters']):.0f} us with waiters"
            )
            figures = {"server": args.server, "waiters": args.waiters, "rates": rates}
            print(json.dumps({**figures, "cpu_us": cpus}))
        finally:
            server.stop()
            redis.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
