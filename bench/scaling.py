"""The scale row's pure parts: how a queue's shards sit on the masters, rates per
core-second of CPU, and what those imply for a machine with more cores.

Nothing here starts a process, so ``bench/tests/test_bench_parsing.py`` checks it fast.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from dataclasses import dataclass

from redis.crc import key_slot

from taskhub.store.sharding import Shards

# (first slot, last slot, master) as CLUSTER SLOTS lists them.
SlotRange = tuple[int, int, str]


def shards_per_master(name: str, shards: int, ranges: Sequence[SlotRange]) -> dict[str, int]:
    """How many of queue ``name``'s shards each master serves (every master listed)."""
    layout = Shards(shards, name=name, tagged=True)
    counts = collections.Counter({master: 0 for _, _, master in ranges})
    for shard in range(shards):
        slot = key_slot(f"saq:{layout.queue_name(shard)}:queued".encode())
        counts[next(m for start, end, m in ranges if start <= slot <= end)] += 1
    return dict(counts)


def per_core_second(rate: float, cpu_pct: float) -> float | None:
    """Units of work (requests, jobs) per second of one core's CPU, from a rate and the
    CPU percent (100 = one core) a process family took meanwhile."""
    return rate / (cpu_pct / 100) if cpu_pct > 0 else None


@dataclass(frozen=True)
class Projection:
    """A rate projected from CPU costs, and what bounds it."""

    cores: int
    rate: float
    bound: str  # "cores", or the family whose processes are all busy


def project(cores: int, rates: dict[str, float], caps: dict[str, int]) -> Projection:
    """The rate ``cores`` cores could sustain when every unit of work costs each process
    family ``1 / rates[family]`` core-seconds (``rates``: units per core-second of that
    family's CPU, as measured), and a family of single-threaded processes can use at
    most ``caps[family]`` cores (taskhub processes, Redis masters; the load spread evenly
    over them). The least of what the cores can pay for and what each capped family can.

    It assumes the CPU per unit stays what it was on the measuring machine (no
    contention beyond CPU), and leaves out the load generator.
    """
    if cores < 1 or not rates or min(rates.values()) <= 0:
        raise ValueError("project() needs at least one core and positive rates")
    candidates = {"cores": cores / sum(1 / rate for rate in rates.values())}
    candidates.update({family: caps[family] * rates[family] for family in caps})
    bound = min(candidates, key=lambda name: candidates[name])
    return Projection(cores, candidates[bound], bound)
