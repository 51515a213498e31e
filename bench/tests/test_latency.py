"""The open-loop rows' rate and notes (bench/latency.py)."""

from types import SimpleNamespace

import pytest

from bench import latency
from bench.procs import BenchError


def fake_bench(**fields):
    defaults = {
        "openloop_rate": None,
        "openloop_basis": "",
        "seed_rates": [],
        "seed": None,
        "seed_missing": "node is not installed",
    }
    return SimpleNamespace(**{**defaults, **fields})


def test_the_rate_is_half_the_seeds_median_and_stays_for_the_run():
    bench = fake_bench(seed_rates=[7000.0, 8001.0, 7600.0])
    assert latency.target_rate(bench) == 3800.0
    assert bench.openloop_basis == "half the seed's 7,600 200s/s (median of 3 runs)"
    bench.seed_rates.append(100.0)  # a later accepted row does not move it
    assert latency.target_rate(bench) == 3800.0


def test_a_given_rate_wins_and_no_seed_without_one_is_an_error():
    given = fake_bench(openloop_rate=1234.0, seed_rates=[7000.0])
    assert latency.target_rate(given) == 1234.0 and given.openloop_basis == ""
    with pytest.raises(BenchError, match=r"node is not installed.*--openloop-rate"):
        latency.target_rate(fake_bench())


def test_the_generator_note_says_rates_errors_and_lag():
    def side(achieved, errors, lag, backlog):
        return {
            "achieved_per_s": achieved,
            "errors": errors,
            "non_2xx": 1,
            "send_lag_p99_ms": lag,
            "max_backlog": backlog,
        }

    pairs = [
        {"A": side(3790.0, 0, 0.2, 0), "B": side(3780.0, 2, 1.5, 3)},
        {"A": side(3800.0, 1, 30.0, 120), "B": None},
    ]
    assert latency.generator_note(pairs) == (
        "A achieved 3,790-3,800/s, 3 errors or non-2xx, send lag p99 30 ms, "
        "120 waiting for a connection at most; "
        "B achieved 3,780-3,780/s, 3 errors or non-2xx, send lag p99 1.5 ms, "
        "3 waiting for a connection at most"
    )
