"""The scale row: admitted requests/s with 1, 2 and 3 server processes, and jobs/s
with 1, 2 and 3 worker processes, on a local Redis Cluster (3 masters, 3 replicas),
each against one process on the same cluster (the scaling factor), and one process
on the cluster against one on the private single Redis (the cost of the cluster hop).

Every pair measures every setup once, in an order rotated from pair to pair so that
drift spreads over all of them; each setup's Redis is emptied before each run.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from bench import configs, wrk
from bench.enqueue import enqueue_jobs
from bench.measure import Metric, failed, summarize
from bench.procs import BenchError, Proc
from bench.profile import CpuShares, process_tree
from bench.rows import Bench, Figures
from bench.scaling import per_core_second, project, shards_per_master
from bench.watch import LogWatcher
from taskhub.store.sharding import Shards
from tests.support.cluster import LocalCluster
from tests.support.processes import free_port, wait_until

# Two shards per master. A shard is one slot, so it loads one master: at least one per
# master. Six also spread evenly over 1, 2, 3 or 6 masters, so a cluster can grow by
# moving slots (resharding) without changing `shards`, which needs an empty queue. Not
# more: a worker slot whose shard is empty looks through the others in turn, and every
# extra shard is one more look. The six land two on each master: taskhub.store.sharding
# spreads the shards' tags over the slot space (checked when the cluster starts).
SHARDS = 6
COUNTS = (1, 2, 3)
CORES = (4, 8, 16)
MASTERS = 3  # LocalCluster's: one replica each
SERVING = b"server processes serving"  # the supervisor's INFO line once all children serve
Setup = tuple[str, int]  # (target name, processes)


@dataclass
class Target:
    """One Redis deployment the row runs on: the private cluster, or the private server."""

    name: str
    url: str
    cluster: bool
    queue: str
    shards: int
    client: redis.Redis | redis.RedisCluster
    masters: list[redis.Redis]
    pids: dict[str, list[int]]  # CPU families ("redis masters", ...) and their pids
    flush: Callable[[], None]

    def queue_settings(self) -> dict[str, Any]:
        return {"name": self.queue, "shards": self.shards, "shard_by": "user"}

    def queue_keys(self) -> list[str]:
        layout = Shards(self.shards, name=self.queue, tagged=self.cluster)
        return [f"saq:{layout.queue_name(shard)}" for shard in range(self.shards)]

    def blocked(self) -> int:
        """Workers' slots blocked on an empty queue, over every master."""
        return sum(
            sum(c.get("cmd") in ("blmove", "brpoplpush") for c in m.client_list())
            for m in self.masters
        )

    def config(
        self, bench: Bench, directory: Path, *, log_level: str = "WARNING"
    ) -> tuple[Path, int]:
        """A config on this Redis in ``directory``, and the server port it names."""
        port = free_port()
        settings = configs.config(
            self.url,
            port,
            directory / "task.log",
            queue=self.queue_settings(),
            cluster=self.cluster,
            log_level=log_level,
        )
        return configs.write(directory / "config.yaml", settings, bench.taskhub), port


@contextmanager
def cluster_target(bench: Bench) -> Iterator[Target]:
    """The private cluster as a target, stopped (and its directory removed) at the end."""
    try:
        cluster = LocalCluster.start()
    except (OSError, subprocess.SubprocessError, AssertionError) as exc:
        raise BenchError(f"the local Redis Cluster did not start: {exc}") from exc
    clients: list[redis.Redis] = []
    client: redis.RedisCluster | None = None
    try:
        masters = [n for n in cluster.nodes if n.info("replication")["role"] == "master"]
        replicas = [n for n in cluster.nodes if n not in masters]
        clients = [m.client() for m in masters]
        slots = clients[0].execute_command("CLUSTER", "SLOTS")
        ranges = [(int(start), int(end), str(master[1])) for start, end, master, *_ in slots]
        client = redis.RedisCluster(host="127.0.0.1", port=masters[0].port)
        spread = shards_per_master(configs.QUEUE, SHARDS, ranges)
        if max(spread.values()) - min(spread.values()) > 1:  # taskhub.store.sharding's promise
            raise BenchError(f"the {SHARDS} shards sit unevenly on the masters: {spread}")

        def flush() -> None:
            for master in clients:  # our own nodes, never the shared 6379
                assert master.connection_pool.connection_kwargs["port"] != 6379
                master.flushall()

        yield Target(
            "cluster",
            cluster.url,
            True,
            configs.QUEUE,
            SHARDS,
            client,
            clients,
            {
                "redis masters": [n.proc.pid for n in masters if n.proc],
                "redis replicas": [n.proc.pid for n in replicas if n.proc],
            },
            flush,
        )
    finally:
        if client is not None:
            client.close()
        for master in clients:
            master.close()
        cluster.stop()


def single_target(bench: Bench) -> Target:
    client = bench.redis.client
    pids = {"redis": [bench.redis.proc.pid]}
    return Target(
        "single",
        bench.redis.url,
        False,
        configs.QUEUE,
        1,
        client,
        [client],
        pids,
        bench.redis.flush,
    )


def rotated(setups: list[Setup], index: int) -> list[Setup]:
    shift = index % len(setups)
    return setups[shift:] + setups[:shift]


@dataclass
class Runs:
    """Every pair's figures per setup, and the metrics made from them."""

    pairs: list[dict[Setup, Figures]] = field(default_factory=list)

    def as_pairs(self, a: Setup, b: Setup) -> list[dict[str, Any]]:
        """The harness's A/B pair format, for :func:`bench.measure.summarize`."""
        return [
            {"pair": i + 1, "order": [label(a), label(b)], "A": run[a], "B": run[b]}
            for i, run in enumerate(self.pairs)
        ]

    def median(self, setup: Setup, key: str) -> float:
        return statistics.median(run[setup][key] for run in self.pairs)

    def cpu(self, setup: Setup) -> dict[str, float]:
        shares = [run[setup]["cpu_pct"] for run in self.pairs]
        return {name: statistics.median(s[name] for s in shares) for name in shares[0]}


def label(setup: Setup) -> str:
    return f"{setup[0]} x{setup[1]}"


def measure_pairs(
    bench: Bench, row: str, setups: list[Setup], run: Callable[[Setup], Figures]
) -> Runs:
    runs = Runs()
    for index in range(bench.pairs):
        figures = {setup: run(setup) for setup in rotated(setups, index)}
        runs.pairs.append(figures)
        shown = ", ".join(
            f"{label(s)} {figures[s]['rate']:.0f}/s (CPU {figures[s]['cpu_pct']})" for s in setups
        )
        bench.say(f"  [{row}] pair {index + 1}/{bench.pairs}: {shown}")
    return runs


# --------------------------------------------------------------------- admitted/s


def start_servers(bench: Bench, target: Target, count: int, directory: Path) -> tuple[Proc, str]:
    """``taskhub serve --workers COUNT``, once every server process serves."""
    config, port = target.config(bench, directory, log_level="INFO")
    args = [str(bench.taskhub), "serve", str(config)]
    if count > 1:
        args += ["--workers", str(count)]
    proc = Proc(f"taskhub serve x{count}", args, directory / "serve.log", cwd=directory)
    url = f"http://127.0.0.1:{port}"
    proc.wait_ready(f"{url}/health", timeout=60)
    if count > 1 and not wait_until(lambda: SERVING in proc.log.read_bytes(), 60, 0.05):
        proc.stop()
        raise BenchError(f"serve --workers {count} did not report serving:\n{proc.tail()}")
    return proc, url


def admitted(bench: Bench, targets: dict[str, Target]) -> list[Metric]:
    setups: list[Setup] = [("cluster", n) for n in COUNTS] + [("single", 1)]
    directory = bench.scratch("scale-admitted")
    script = wrk.random_users_script(directory)
    procs: dict[Setup, tuple[Proc, str]] = {}
    try:
        for setup in setups:
            where = directory / label(setup).replace(" ", "-")
            where.mkdir()
            procs[setup] = start_servers(bench, targets[setup[0]], setup[1], where)
            targets[setup[0]].flush()
            bench.load(procs[setup][1], script, bench.warmup)

        def run(setup: Setup) -> Figures:
            target, (proc, url) = targets[setup[0]], procs[setup]
            target.flush()
            shares = CpuShares({"servers": process_tree(proc.pid), **target.pids})
            result, figures = bench.load(url, script, bench.duration)
            figures["cpu_pct"] = shares.done(result.seconds or bench.duration)
            figures["rate"] = figures["ok_per_s"]
            return figures

        runs = measure_pairs(bench, "scale", setups, run)
    finally:
        for proc, _ in procs.values():
            proc.stop()
    return metrics(runs, "admitted/s", "servers", "200s/s")


# --------------------------------------------------------------------- jobs/s


def drain(bench: Bench, target: Target, count: int) -> Figures:
    """Admit ``drain_jobs`` jobs through the hub, hold them back (each shard's queued list
    renamed) while COUNT workers start and block on the empty queue, release them, and
    time the drain to the last task.log line of all workers."""
    jobs = bench.drain_jobs
    directory = bench.scratch(f"scale-drain-{target.name}-{count}")
    target.flush()
    config, _ = target.config(bench, directory)
    if (admitted := enqueue_jobs(config, jobs)) != jobs:
        raise BenchError(f"only {admitted} of {jobs} jobs were admitted on {target.name}")
    queues = [q for q in target.queue_keys() if target.client.exists(f"{q}:queued")]
    for queue in queues:
        target.client.rename(f"{queue}:queued", f"{queue}:held")
    # Every worker appends to the one task.log the config names, a batch per write.
    watcher = LogWatcher(directory / "task.log")
    workers: list[Proc] = []
    try:
        for index in range(count):
            args = [str(bench.taskhub), "worker", str(config)]
            log = directory / f"worker-{index + 1}.log"
            workers.append(Proc(f"taskhub worker {index + 1}", args, log, cwd=directory))

        def alive() -> bool:
            return all(w.alive() for w in workers)

        idle = count * configs.CONCURRENCY
        if not wait_until(lambda: target.blocked() >= idle or not alive(), 60, 0.05) or not alive():
            tails = "\n".join(w.tail() for w in workers)
            raise BenchError(f"{count} workers did not all block on the empty queue:\n{tails}")
        shares = CpuShares({"workers": [w.pid for w in workers], **target.pids})
        released = time.monotonic()
        for queue in queues:
            target.client.rename(f"{queue}:held", f"{queue}:queued")
        finished = watcher.wait_lines(jobs, timeout=max(120, jobs / 50), alive=alive)
        if finished is None:
            raise BenchError(
                f"{count} workers completed {watcher.lines} of {jobs} jobs on {target.name}"
            )
        cpu = shares.done(finished - released)
        cpu.pop("wrk")
        left = sum(target.client.llen(f"{q}:queued") for q in target.queue_keys())
    finally:
        for worker in workers:
            worker.stop()
        watcher.stop()
    elapsed = finished - released
    return {
        "jobs": jobs,
        "lines": watcher.lines,
        "seconds": elapsed,
        "rate": jobs / elapsed,
        "jobs_per_s": jobs / elapsed,
        "queued_left": left,
        "cpu_pct": cpu,
    }


def drained(bench: Bench, targets: dict[str, Target]) -> list[Metric]:
    setups: list[Setup] = [("cluster", n) for n in COUNTS] + [("single", 1)]
    runs = measure_pairs(bench, "scale", setups, lambda s: drain(bench, targets[s[0]], s[1]))
    return metrics(runs, "jobs/s", "workers", "jobs/s")


# --------------------------------------------------------------------- the table


def metrics(runs: Runs, what: str, family: str, figure: str) -> list[Metric]:
    """The cluster hop (1 process, cluster vs single Redis), then the scaling factor of
    2 and 3 processes (vs 1, both on the cluster), then the notes: CPU shares per setup,
    rates per core-second of CPU, and the projection for more cores."""
    one: Setup = ("cluster", 1)
    singular = family.removesuffix("s")
    hop = Metric(
        "scale",
        f"{what}, cluster hop",
        "info",
        None,
        "x",
        f"1 {singular}, cluster",
        f"1 {singular}, one Redis (shards 1)",
        figure=figure,
    )
    result = [summarize(hop, runs.as_pairs(one, ("single", 1)), "rate", "rate")]
    for count in COUNTS[1:]:
        metric = Metric(
            "scale",
            f"{what}, {count} {family} / 1",
            "info",
            None,
            "x",
            f"{count} {family}",
            f"1 {singular}",
            figure=figure,
        )
        result.append(summarize(metric, runs.as_pairs(("cluster", count), one), "rate", "rate"))
    result[0].note = cpu_note(runs) + projection_note(runs, family)
    return result


def cpu_note(runs: Runs) -> str:
    """Each setup's CPU by process family, their sum, and the whole machine's busy CPU:
    what the row's processes did not take, other work on the machine did."""
    parts = []
    for setup in runs.pairs[0]:
        shares = runs.cpu(setup)
        machine = shares.pop("machine", None)
        shown = ", ".join(f"{name} {pct:.0f}" for name, pct in shares.items())
        parts.append(
            f"{label(setup)}: {shown} (sum {sum(shares.values()):.0f}"
            + (f", whole machine {machine:.0f})" if machine is not None else ")")
        )
    return f"CPU % (100 = one core; this machine has {os.cpu_count()}): {'; '.join(parts)}. "


def core_rates(runs: Runs, setup: Setup, family: str) -> dict[str, float]:
    """Work per core-second of each family's CPU (the row's processes, Redis masters
    and replicas) in one setup: medians of the pairs."""
    rate = runs.median(setup, "rate")
    rates = {name: per_core_second(rate, pct) for name, pct in runs.cpu(setup).items()}
    keep = (family, "redis masters", "redis replicas")
    return {name: value for name, value in rates.items() if name in keep and value}


def projection_note(runs: Runs, family: str) -> str:
    """Rates per core-second for each count of processes on the cluster, and the
    projection from the most processes measured: their CPU per unit includes what
    running several costs (smaller pipelined batches each, more switching), which the
    figures of one process would leave out."""
    measured = [("cluster", n) for n in COUNTS if ("cluster", n) in runs.pairs[0]]
    shown = []
    for setup in measured:
        rates = core_rates(runs, setup, family)
        listed = ", ".join(f"{name} {value:,.0f}" for name, value in rates.items())
        shown.append(f"{label(setup)}: {listed}")
    basis = measured[-1]
    rates = core_rates(runs, basis, family)
    if family not in rates or "redis masters" not in rates:
        return "no projection: a family took no measurable CPU. "
    caps = {name: MASTERS for name in ("redis masters", "redis replicas") if name in rates}
    guesses = []
    for cores in CORES:
        projected = project(cores, rates, caps)
        guesses.append(f"{cores} cores ~{projected.rate:,.0f}/s (bound: {projected.bound})")
    return (
        f"per core-second of CPU: {'; '.join(shown)}. "
        f"PROJECTION from {label(basis)}, not measured (as many {family} as cores, "
        f"{MASTERS} masters + {MASTERS} replicas, no load generator, CPU per unit as "
        f"measured here): {'; '.join(guesses)}. "
    )


def scale(bench: Bench) -> list[Metric]:
    """The whole row: a private cluster for its duration, the private Redis beside it."""
    with cluster_target(bench) as cluster:
        targets = {"cluster": cluster, "single": single_target(bench)}
        bench.say(f"  [scale] cluster up; queue {cluster.queue!r}: {SHARDS} shards, 2 per master")
        return half(admitted, bench, targets) + half(drained, bench, targets)


def half(
    measure: Callable[[Bench, dict[str, Target]], list[Metric]],
    bench: Bench,
    targets: dict[str, Target],
) -> list[Metric]:
    """One half of the row; a half that cannot be measured does not lose the other."""
    try:
        return measure(bench, targets)
    except BenchError as exc:
        bench.say(f"  [scale] {measure.__name__} failed: {exc}")
        return [failed("scale", f"{measure.__name__}: {exc}")]
