"""Submissions per second through ``POST /tasks`` batches against single ``POST /task``,
on the same server and private Redis, in the same run.

    python -m bench.batch [--duration 5] [--connections 8] [--size 100] [--rounds 2]

Each round measures singles then batches for ``--duration`` seconds each, with
``--connections`` keep-alive connections sending back to back (a small raw HTTP/1.1
client, so the client's cost per request stays low for both). The limiter admits
everything (a large bucket); Redis is emptied between phases. Prints one line per
phase and the ratio of the best batch rate to the best single rate.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import orjson

from bench.configs import config, write
from bench.procs import PrivateRedis, Proc
from tests.support.processes import free_port

REQUESTS = 512  # distinct prebuilt requests each connection cycles through


def request(path: str, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def singles() -> list[bytes]:
    return [request("/task", orjson.dumps({"user_id": f"u{n}"})) for n in range(REQUESTS)]


def batches(size: int) -> list[bytes]:
    return [
        request(
            "/tasks",
            orjson.dumps({"tasks": [{"user_id": f"u{n}-{i}"} for i in range(size)]}),
        )
        for n in range(REQUESTS)
    ]


async def connection(port: int, requests: list[bytes], until: float) -> tuple[int, int]:
    """Send requests back to back until ``until``: (requests answered, jobs queued)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answered = queued = 0
    try:
        while time.monotonic() < until:
            writer.write(requests[answered % len(requests)])
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            body = await reader.readexactly(length)
            answered += 1
            queued += body.count(b'"queued"')
    finally:
        writer.close()
    return answered, queued


async def phase(port: int, requests: list[bytes], connections: int, duration: float) -> float:
    """Jobs queued per second over ``duration`` seconds."""
    started = time.monotonic()
    until = started + duration
    counts = await asyncio.gather(*(connection(port, requests, until) for _ in range(connections)))
    elapsed = time.monotonic() - started
    return sum(queued for _, queued in counts) / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--server", default="sanic")
    args = parser.parse_args()
    taskhub = Path(sys.executable).parent / "taskhub"
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        workdir = Path(tmp)
        redis = PrivateRedis(workdir)
        port = free_port()
        settings = config(
            redis.url, port, workdir / "task.log", capacity=1_000_000, server=args.server
        )
        settings["server"]["batch_limit"] = max(args.size, 1)
        settings["server"]["body_limit"] = 1024 * 1024
        path = write(workdir / "config.yaml", settings, taskhub)
        server = Proc("taskhub serve", [str(taskhub), "serve", str(path)], workdir / "serve.log")
        try:
            server.wait_ready(f"http://127.0.0.1:{port}/health")
            single_rates, batch_rates = [], []
            for round_ in range(args.rounds):
                for name, requests, rates in (
                    ("POST /task", singles(), single_rates),
                    (f"POST /tasks x{args.size}", batches(args.size), batch_rates),
                ):
                    redis.flush()
                    rate = asyncio.run(phase(port, requests, args.connections, args.duration))
                    rates.append(rate)
                    print(f"round {round_ + 1}: {name:<18} {rate:>10,.0f} submissions/s")
            ratio = max(batch_rates) / max(single_rates)
            print(
                f"best: singles {max(single_rates):,.0f}/s, batches of {args.size} "
                f"{max(batch_rates):,.0f}/s: {ratio:.1f}x ({args.server}, "
                f"{args.connections} connections, {args.duration:g} s phases)"
            )
        finally:
            server.stop()
            redis.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
