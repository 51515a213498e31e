"""The open-loop load generator (``bench/c/openloop.c``): requests at a fixed rate,
latency from each request's scheduled send time. Built from the tree with the
machine's C compiler the first time it is needed (``build/bench/``, ignored by git)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from bench.procs import BenchError

ROOT = Path(__file__).resolve().parent.parent
SOURCE = Path(__file__).resolve().parent / "c" / "openloop.c"
BUILD = ROOT / "build" / "bench"
CONNECTIONS = 64
# The accepted row's load: POST /task for a user drawn at random among 1M.
TASK_BODY = '{"user_id":"o%u"}'
JSON_HEADER = "Content-Type: application/json"


class OpenLoopError(ValueError):
    """The generator printed something other than its one JSON line."""


@dataclass(frozen=True)
class OpenLoopResult:
    """What one run measured. Latencies in ms, from each request's scheduled time;
    requests still unanswered at the end count at the time they had waited."""

    target_rate: float
    duration_s: float
    connections: int
    due: int  # requests scheduled in the measured window
    sent: int
    answered: int
    ok: int  # 2xx and 3xx
    non_2xx: int
    failed: int  # sent, then the connection closed or broke before the answer
    unanswered: int  # due but not answered when the generator gave up waiting
    connect_errors: int
    protocol_errors: int
    reconnects: int  # connections the server closed between requests, opened again
    # answers per second, first to last answer (but no faster than the schedule)
    achieved_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    mean_ms: float
    send_lag_p99_ms: float  # due to sent: the generator's lag and any wait for a connection
    send_lag_max_ms: float
    max_backlog: int  # most requests due at once with no connection free
    statuses: dict[str, int] = field(default_factory=dict)

    @property
    def errors(self) -> int:
        """Requests that got no HTTP answer, and connections that could not be opened."""
        return self.failed + self.unanswered + self.connect_errors + self.protocol_errors

    @property
    def rate_error(self) -> float:
        """How far the achieved rate is from the target, as a fraction of it."""
        return abs(self.achieved_per_s - self.target_rate) / self.target_rate

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "errors": self.errors}


def parse(output: str) -> OpenLoopResult:
    """The generator's JSON line (the keys this harness reads; others are ignored)."""
    try:
        data = json.loads(output.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError) as exc:
        raise OpenLoopError(f"unexpected openloop output:\n{output}") from exc
    names = [f.name for f in fields(OpenLoopResult)]
    missing = [name for name in names if name not in data]
    if missing:
        raise OpenLoopError(f"openloop output lacks {', '.join(missing)}:\n{output}")
    return OpenLoopResult(**{name: data[name] for name in names})


def binary(build_dir: Path = BUILD) -> Path:
    """The generator built from ``SOURCE``, compiled once per version of the source."""
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]
    target = build_dir / f"openloop-{digest}"
    if target.exists():
        return target
    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        raise BenchError("no C compiler to build bench/c/openloop.c (apt-get install gcc)")
    build_dir.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".tmp")
    done = subprocess.run(
        [compiler, "-O2", "-Wall", "-o", str(partial), str(SOURCE), "-lm"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(f"building {SOURCE} failed:\n{done.stderr}")
    partial.replace(target)  # atomic: a concurrent build never runs a half-written file
    return target


def command(
    program: Path,
    url: str,
    rate: float,
    duration: float,
    *,
    connections: int = CONNECTIONS,
    warmup: float = 0.0,
    body: str | None = None,
    users: int = 1_000_000,
    headers: Sequence[str] = (),
    seed: int = 1,
    drain: float = 5.0,
    trace: Path | None = None,
) -> list[str]:
    if rate <= 0 or duration <= 0:
        raise ValueError("rate and duration must be positive")
    args = [str(program), "-r", f"{rate:g}", "-d", f"{duration:g}", "-c", str(connections)]
    args += ["-w", f"{warmup:g}", "-s", str(seed), "-T", f"{drain:g}"]
    if body is not None:
        args += ["-b", body, "-u", str(users)]
    for header in headers:
        args += ["-H", header]
    if trace is not None:
        args += ["-o", str(trace)]
    return [*args, url]


def run(url: str, rate: float, duration: float, **options: Any) -> OpenLoopResult:
    """One run of the generator against ``url``; ``options`` as :func:`command` takes."""
    args = command(binary(), url, rate, duration, **options)
    timeout = duration + options.get("warmup", 0.0) + options.get("drain", 5.0) + 30
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise BenchError(f"openloop failed ({done.returncode}): {done.stderr or done.stdout}")
    return parse(done.stdout)


def task_load(url: str, rate: float, duration: float, seed: int = 1) -> OpenLoopResult:
    """POST ``url`` (a /task endpoint) at ``rate``, each for a user among 1M."""
    return run(url, rate, duration, body=TASK_BODY, headers=[JSON_HEADER], seed=seed)
