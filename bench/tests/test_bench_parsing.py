"""The benchmark harness's pure parts: wrk's output, medians, ratios, verdicts."""

import math
import os
import subprocess
import sys

import pytest

from bench import profile
from bench.measure import (
    Metric,
    WrkParseError,
    median,
    pair_order,
    parse_wrk,
    ratio,
    summarize,
    verdict,
)
from bench.rows import note_cpu
from bench.scale import Runs, core_rates, cpu_note, projection_note, rotated
from bench.scaling import Projection, per_core_second, project, shards_per_master

WRK_OUTPUT = """\
Running 8s test @ http://127.0.0.1:3000/task
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     5.12ms    1.03ms  20.11ms   90.00%
    Req/Sec     6.27k   300.00     6.80k    80.00%
  Latency Distribution
     50%  850.00us
     75%    5.40ms
     90%    6.01ms
     99%    1.20s
  50123 requests in 8.00s, 7.55MB read
  Socket errors: connect 0, read 2, write 0, timeout 3
  Non-2xx or 3xx responses: 123
Requests/sec:   6263.77
Transfer/sec:    966.40KB
"""


def test_parse_wrk_reads_totals_latency_units_and_errors():
    result = parse_wrk(WRK_OUTPUT)
    assert result.requests == 50123
    assert result.seconds == pytest.approx(8.0)
    assert result.requests_per_s == pytest.approx(6263.77)
    assert result.p50_ms == pytest.approx(0.85)
    assert result.p99_ms == pytest.approx(1200.0)
    assert result.non_2xx == 123
    assert result.socket_errors == 5
    assert result.ok == 50000
    assert result.as_dict()["ok"] == 50000


def test_parse_wrk_without_errors_counts_none():
    lines = [
        line
        for line in WRK_OUTPUT.splitlines()
        if "Non-2xx" not in line and "Socket errors" not in line
    ]
    result = parse_wrk("\n".join(lines))
    assert (result.non_2xx, result.socket_errors, result.ok) == (0, 0, 50123)


def test_parse_wrk_rejects_other_output():
    with pytest.raises(WrkParseError):
        parse_wrk("unable to connect to 127.0.0.1:3000 Connection refused\n")


def test_median_ratio_and_pair_order():
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([1.0, 2.0, 3.0, 10.0]) == 2.5
    assert ratio(6.0, 2.0) == 3.0
    assert math.isinf(ratio(1.0, 0.0))
    assert math.isnan(ratio(0.0, 0.0))
    assert [pair_order(i) for i in range(3)] == [("A", "B"), ("B", "A"), ("A", "B")]


def test_verdicts():
    assert verdict(3.0, ">=", 3.0) == "PASS"
    assert verdict(2.9, ">=", 3.0) == "SHORT"
    assert verdict(0.5, "<=", 0.5) == "PASS"
    assert verdict(0.6, "<=", 0.5) == "SHORT"
    assert verdict(None, ">=", 1.0) == "MISSING"
    assert verdict(float("nan"), ">=", 1.0) == "MISSING"
    assert verdict(1.0, "info", None) == "INFO"


def test_summarize_takes_the_median_of_per_pair_ratios():
    pairs = [
        {"A": {"rps": 300.0}, "B": {"rps": 100.0}},  # 3.0
        {"A": {"rps": 100.0}, "B": {"rps": 100.0}},  # 1.0
        {"A": {"rps": 500.0}, "B": {"rps": 250.0}},  # 2.0
    ]
    metric = summarize(Metric("r", "rps", ">=", 3.0, "x", "A"), pairs, "rps", "rps")
    assert metric.value == 2.0
    assert metric.a_value == 300.0
    assert metric.b_value == 100.0
    assert metric.verdict == "SHORT"
    assert metric.as_dict()["verdict"] == "SHORT"


def test_summarize_without_a_baseline_is_missing_but_keeps_a():
    pairs = [{"A": {"rps": 10.0}, "B": None}, {"A": {"rps": 30.0}, "B": None}]
    metric = summarize(Metric("r", "rps", ">=", 3.0, "x", "A"), pairs, "rps", "rps")
    assert metric.verdict == "MISSING"
    assert metric.value is None
    assert metric.a_value == 20.0


def test_profile_summary_groups_own_samples_by_package(tmp_path):
    raw = tmp_path / "stacks.txt"
    raw.write_text(
        "connection_task (connection_task:15);submit (taskhub/builtin/sanic_server.py:184) 6\n"
        "Http.http1 (sanic/http/http1.py:123);send (send:13) 3\n"
        "<module> (taskhub:6);Runner.run (asyncio/runners.py:118) 1\n"
    )
    assert profile.package("send (send:13)") == "sanic (generated)"
    assert profile.package("x (pydantic/main.py:1)") == "pydantic"
    summary = profile.summarize(raw)
    assert "10 samples" in summary
    assert " 60.0%  taskhub" in summary and " 30.0%  sanic (generated)" in summary
    assert summary.index("taskhub/builtin/sanic_server.py:184") < summary.index("send:13")


def test_http_rows_note_the_median_cpu_share_of_each_process():
    def pair(server: float) -> dict:
        return {
            "A": {"cpu_pct": {"server": server, "redis": 30.0, "wrk": 20.0}},
            "B": {"cpu_pct": {"server": 100.0, "redis": 0.0, "wrk": 35.0}},
        }

    metric = Metric("accepted", "requests/s", ">=", 3.0, "x", "a", "b")
    note_cpu([metric], [pair(80.0), pair(90.0), pair(99.0)])
    assert "A server 90, redis 30, wrk 20; B server 100, redis 0, wrk 35" in metric.note


# The scale row's maths (bench/scaling.py, bench/scale.py).

THREE_MASTERS = [(0, 5460, "a"), (5461, 10922, "b"), (10923, 16383, "c")]


def test_shards_per_master_counts_each_shards_slot_once():
    counts = shards_per_master("bench", 6, THREE_MASTERS)
    assert set(counts) == {"a", "b", "c"}
    # taskhub.store.sharding spreads the tags over the slot space: two on each master.
    assert sorted(counts.values()) == [2, 2, 2]
    assert shards_per_master("bench", 1, [(0, 16383, "only")]) == {"only": 1}


def test_per_core_second_is_work_over_cpu_cores():
    assert per_core_second(6000.0, 50.0) == 12000.0
    assert per_core_second(6000.0, 200.0) == 3000.0
    assert per_core_second(6000.0, 0.0) is None


def test_projection_splits_the_cores_then_caps_single_threaded_families():
    rates = {"servers": 10_000.0, "redis masters": 40_000.0}
    # Each request costs 1/10k + 1/40k core-seconds: 4 cores pay for 32k/s.
    assert project(4, rates, {"redis masters": 3}) == Projection(4, 32_000.0, "cores")
    # 16 cores would pay for 128k/s, but three single-threaded masters do 120k/s.
    assert project(16, rates, {"redis masters": 3}) == Projection(16, 120_000.0, "redis masters")
    with pytest.raises(ValueError):
        project(0, rates, {})


def test_rotated_orders_start_each_pair_with_the_next_setup():
    setups = [("cluster", 1), ("cluster", 2), ("single", 1)]
    assert rotated(setups, 0) == setups
    assert rotated(setups, 1) == [("cluster", 2), ("single", 1), ("cluster", 1)]
    assert rotated(setups, 3) == setups


def test_cpu_note_and_projection_from_the_pairs():
    def run(rate: float, server: float) -> dict:
        cpu = {"servers": server, "redis masters": 25.0, "wrk": 10.0, "machine": 190.0}
        return {"rate": rate, "cpu_pct": cpu}

    runs = Runs(
        [
            {("cluster", 1): run(5000.0, 50.0), ("cluster", 2): run(8000.0, 100.0)},
            {("cluster", 1): run(7000.0, 70.0), ("cluster", 2): run(10000.0, 150.0)},
        ]
    )
    note = cpu_note(runs)
    assert "cluster x1: servers 60, redis masters 25, wrk 10 (sum 95, whole machine 190)" in note
    one = core_rates(runs, ("cluster", 1), "servers")
    assert one == {"servers": 10_000.0, "redis masters": 24_000.0}
    two = core_rates(runs, ("cluster", 2), "servers")
    assert two == {"servers": 7_200.0, "redis masters": 36_000.0}
    projected = projection_note(runs, "servers")
    assert "cluster x1: servers 10,000, redis masters 24,000" in projected
    # From the most processes measured: 1 / (1/7200 + 1/36000) = 6000 per core.
    assert "PROJECTION from cluster x2, not measured" in projected
    assert "4 cores ~24,000/s (bound: cores)" in projected
    assert "16 cores ~96,000/s (bound: cores)" in projected


def test_process_tree_finds_a_child():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert profile.process_tree(os.getpid())[0] == os.getpid()
        assert child.pid in profile.process_tree(os.getpid())
    finally:
        child.kill()
        child.wait()
