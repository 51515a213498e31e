"""Where the time goes: CPU shares during a run, and a py-spy profile of taskhub.

On a 2-core machine wrk, Redis and the server under test share the CPUs, so a
row's ratio says little on its own; the share each process took during the
run, and the server's hottest frames, say why.
"""

from __future__ import annotations

import collections
import os
import resource
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")
TOP = 12


def cpu_seconds(pid: int) -> float:
    """User plus system CPU of a live process, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def children_cpu_seconds() -> float:
    """CPU of every child this process has reaped (wrk, once it has exited)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def machine_busy_seconds() -> float:
    """CPU seconds every core of the machine has spent busy (not idle or waiting on I/O),
    from /proc/stat: with other work on the machine, a run's processes are not all."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    ticks = [int(f) for f in fields[:8]]  # user nice system idle iowait irq softirq steal
    return (sum(ticks) - ticks[3] - ticks[4]) / TICKS


def process_tree(pid: int) -> list[int]:
    """``pid`` and every live descendant (a supervisor and its server processes)."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        children[int(fields[1])].append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo += children.get(tree[-1], [])
    return tree


class CpuShares:
    """CPU percent (100 = one core) of named processes (or groups of processes, summed),
    and of wrk, over one run."""

    def __init__(self, pids: Mapping[str, int | Sequence[int]]) -> None:
        self.pids = {name: [p] if isinstance(p, int) else list(p) for name, p in pids.items()}
        self.before = self._sample()

    def _sample(self) -> dict[str, float]:
        sample = {name: sum(map(cpu_seconds, pids)) for name, pids in self.pids.items()}
        sample["wrk"] = children_cpu_seconds()
        sample["machine"] = machine_busy_seconds()
        return sample

    def done(self, seconds: float) -> dict[str, float]:
        after = self._sample()
        return {name: round(100 * (after[name] - self.before[name]) / seconds, 1) for name in after}


def py_spy() -> str | None:
    """py-spy from this environment (the bench extra), or else from PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def record(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    """Start sampling ``pid`` for ``seconds`` into ``out`` (py-spy's raw, collapsed stacks)."""
    binary = py_spy()
    assert binary is not None
    duration = str(max(1, int(seconds)))
    args = ["record", "-p", str(pid), "-d", duration, "-r", "250", "-f", "raw", "-o", str(out)]
    return subprocess.Popen(
        [binary, *args, "--nonblocking"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def package(frame: str) -> str:
    """``fn (sanic/http/http1.py:123)`` -> ``sanic``; frames without a file are code
    Sanic generates at start-up (its request and response paths)."""
    location = frame.rpartition("(")[2]
    path = location.partition(":")[0]
    return path.split("/", 1)[0] if "/" in path else "sanic (generated)"


def summarize(raw: Path, top: int = TOP) -> str:
    """Samples by package, then the frames with the most samples of their own.

    py-spy records a coroutine's stack from its task's root, so "own" samples are
    exact while totals per caller are not; hence no inclusive view.
    """
    own: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples += int(count)
        own[stack.split(";")[-1]] += int(count)
    if not samples:
        return "no samples"
    by_package: collections.Counter[str] = collections.Counter()
    for frame, n in own.items():
        by_package[package(frame)] += n
    lines = [f"{samples} samples (own time; the event loop's frame is its C code and idle time)"]
    lines.append("-- by package")
    lines += [f"{100 * n / samples:5.1f}%  {name}" for name, n in by_package.most_common()]
    lines.append("-- by frame")
    lines += [f"{100 * n / samples:5.1f}%  {frame}" for frame, n in own.most_common(top)]
    return "\n".join(lines)
