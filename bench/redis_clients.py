"""Which Redis client for the admission script: redis-py versions against taskhub's pipeline.

    flock /tmp/taskhub-bench.lock .venv/bin/python -m bench.redis_clients [--port P] [VERSION ...]

Each redis-py version runs in a virtual environment of its own (made once under
~/.cache/taskhub-bench), calling a one-line Lua script through ``register_script``,
20,000 times one after another and in bursts of 100 concurrent calls, with hiredis
and uvloop; then taskhub's ``RedisPipeline`` runs the same calls in this
environment. Versions and the pipeline alternate over ``--rounds`` rounds. The
Redis is a running one on ``--port`` (a private one: the calls INCR one key).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import venv
from pathlib import Path

CACHE = Path.home() / ".cache" / "taskhub-bench"
VERSIONS = ["5.3.1", "7.1.0", "8.1.0"]
CALLS = 20_000
BURST = 100

TIMING = f"""
import asyncio, time
async def timed(call):
    await call()
    t = time.perf_counter()
    for _ in range({CALLS}):
        await call()
    one_by_one = (time.perf_counter() - t) / {CALLS} * 1e6
    t = time.perf_counter()
    for _ in range({CALLS // BURST}):
        await asyncio.gather(*(call() for _ in range({BURST})))
    burst = (time.perf_counter() - t) / {CALLS} * 1e6
    print(f"{{one_by_one:.1f}} {{burst:.1f}}")
"""

REDIS_PY = (
    TIMING
    + """
import sys, uvloop, redis.asyncio as aioredis
async def main():
    client = aioredis.Redis(port=int(sys.argv[1]))
    script = client.register_script("return redis.call('INCR', KEYS[1])")
    await timed(lambda: script(keys=["bench:clients"]))
    await client.aclose()
uvloop.run(main())
"""
)

PIPELINE = (
    TIMING
    + """
import sys, uvloop
from taskhub.config.models import RedisSettings
from taskhub.store.connection import connection_settings
from taskhub.store.pipeline import RedisPipeline
async def main():
    pipeline = RedisPipeline(connection_settings(RedisSettings(url=f"redis://127.0.0.1:{sys.argv[1]}/0")))
    script = pipeline.script("return redis.call('INCR', KEYS[1])")
    await timed(lambda: script(["bench:clients"], []))
    await pipeline.close()
uvloop.run(main())
"""
)


def environment(version: str) -> Path:
    """A venv with redis-py ``version``, hiredis and uvloop; its python."""
    home = CACHE / f"redis-py-{version}"
    python = home / "bin" / "python"
    if not python.exists():
        venv.create(home, with_pip=True)
        packages = [f"redis[hiredis]=={version}", "uvloop"]
        subprocess.run([str(python), "-m", "pip", "install", "-q", *packages], check=True)
    return python


def measure(python: Path | str, code: str, port: int) -> tuple[float, float]:
    out = subprocess.run(
        [str(python), "-c", code, str(port)], capture_output=True, text=True, check=True
    ).stdout.split()
    return float(out[0]), float(out[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("versions", nargs="*", default=VERSIONS, help="redis-py versions")
    parser.add_argument("--port", type=int, default=6390, help="a private Redis to call")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    clients: dict[str, tuple[Path | str, str]] = {
        f"redis-py {v}": (environment(v), REDIS_PY) for v in args.versions
    }
    clients["taskhub RedisPipeline"] = (sys.executable, PIPELINE)
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in clients}
    for _ in range(args.rounds):
        for name, (python, code) in clients.items():
            results[name].append(measure(python, code, args.port))
    print(f"{'client':24} {'one by one, us/call':>20} {f'{BURST} at once, us/call':>20}")
    for name, runs in results.items():
        one = statistics.median(r[0] for r in runs)
        burst = statistics.median(r[1] for r in runs)
        print(f"{name:24} {one:20.1f} {burst:20.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
