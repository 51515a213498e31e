"""Which rows a run measures (bench/plan.py), on which servers (bench/servers.py), the
lines of the per-server rows (bench/rows.py) and their panels in the chart."""

import re

import pytest

from bench import report, servers
from bench.measure import Metric, skipped
from bench.plan import DEFAULT_ROWS, PlanError, Planned, plan, split_rows
from bench.rows import rate_and_p99, server_row

PLUGINS_OUTPUT = """\
taskhub.builtin.limiters.token_bucket (built-in)
  limiter: token_bucket
taskhub.builtin.sanic.server (built-in)
  server: sanic
taskhub.builtin.httptools.server (built-in)
  server: httptools
fancy (fancy 1.0) (entry point)
  server: fancy, other
  commands: fancy
"""
ALL_HERE = dict.fromkeys(servers.SERVERS, "")
ONLY_SANIC = {**ALL_HERE, "httptools": "no plugin", "uvicorn": "no asgi", "granian": "no asgi"}


def labels(planned: list[Planned]) -> list[str]:
    return [p.label for p in planned]


def test_registered_servers_reads_taskhub_plugins():
    names = servers.registered_servers(PLUGINS_OUTPUT)
    assert names == ["sanic", "httptools", "fancy", "other"]
    assert servers.registered_servers("x (built-in)\n  limiter: a\n") == []


def test_missing_says_why_a_server_cannot_run():
    def has(*found: str):
        return lambda name: name in found

    assert servers.missing("sanic", ["sanic"], has()) == ""
    why = servers.missing("httptools", ["sanic"], has())
    assert why == "no server plugin 'httptools' registered (taskhub plugins lists sanic)"
    assert "taskhub.asgi not found" in servers.missing("uvicorn", [], has("uvicorn"))
    assert "granian is not installed" in servers.missing("granian", [], has("taskhub.asgi"))
    assert servers.missing("granian", [], has("taskhub.asgi", "granian")) == ""
    assert servers.module_found("json") and not servers.module_found("no_such.module")


def test_asgi_commands_serve_one_process_on_the_port():
    uvicorn = servers.asgi_command("uvicorn", "a.b:app", "{port}")
    assert uvicorn[:3] == ["-m", "uvicorn", "a.b:app"]
    assert uvicorn[5:7] == ["--port", "{port}"] and "--no-access-log" in uvicorn
    granian = servers.asgi_command("granian", "a.b:app", "8000")
    assert granian[:4] == ["-m", "granian", "--interface", "asgi"]
    assert granian[-1] == "a.b:app" and "--workers" in granian and "--no-access-log" in granian
    with pytest.raises(ValueError):
        servers.asgi_command("sanic", "a.b:app", "1")
    assert servers.label("sanic") == "taskhub serve (sanic)"
    assert servers.label("granian") == "taskhub.asgi (granian)"


def test_split_rows_keeps_brackets_whole():
    assert split_rows("accepted[sanic,uvicorn], drain,,e2e") == [
        "accepted[sanic,uvicorn]",
        "drain",
        "e2e",
    ]


def test_default_run_has_a_row_per_available_server_and_notes_the_others():
    planned, notes = plan(None, None, ONLY_SANIC)
    assert labels(planned) == [
        "accepted[sanic]",
        "refused[sanic]",
        "ceiling[sanic]",
        "openloop[sanic]",
        "alternative",
        "drain",
        "fairness",
        "e2e",
        "memory",
    ]
    assert notes == [
        "server httptools left out: no plugin",
        "server uvicorn left out: no asgi",
        "server granian left out: no asgi",
    ]
    assert "scale" not in DEFAULT_ROWS
    everything, notes = plan(None, None, ALL_HERE)
    assert labels(everything)[:4] == [
        "accepted[sanic]",
        "accepted[httptools]",
        "accepted[uvicorn]",
        "accepted[granian]",
    ]
    assert notes == []


def test_only_a_row_runs_it_on_the_chosen_servers():
    planned, _ = plan("accepted", "granian,sanic", ALL_HERE)
    assert planned == [
        Planned("accepted[granian]", "accepted", "granian"),
        Planned("accepted[sanic]", "accepted", "sanic"),
    ]
    planned, _ = plan("refused[uvicorn],scale", None, ALL_HERE)
    assert planned == [Planned("refused[uvicorn]", "refused", "uvicorn"), Planned("scale", "scale")]


def test_a_server_named_but_missing_is_planned_as_skipped():
    planned, notes = plan("ceiling[sanic,granian]", None, ONLY_SANIC)
    assert planned == [
        Planned("ceiling[sanic]", "ceiling", "sanic"),
        Planned("ceiling[granian]", "ceiling", "granian", skip="no asgi"),
    ]
    assert notes == []
    planned, notes = plan("openloop", "httptools", ONLY_SANIC)
    assert planned == [Planned("openloop[httptools]", "openloop", "httptools", skip="no plugin")]
    assert notes == []


@pytest.mark.parametrize(
    ("only", "chosen", "message"),
    [
        ("nope", None, "unknown row 'nope'"),
        ("accepted[nginx]", None, "unknown server(s): nginx"),
        ("accepted[]", None, "(none given)"),
        ("drain[sanic]", None, "no server dimension"),
        ("accepted[sanic", None, "unknown row"),
        (None, "sanic,apache", "unknown server(s): apache"),
    ],
)
def test_plan_rejects_what_it_does_not_know(only, chosen, message):
    with pytest.raises(PlanError, match=re.escape(message)):
        plan(only, chosen, ALL_HERE)


def test_per_server_rows_and_their_lines():
    assert server_row("accepted", "granian") == "accepted[granian]"
    pair = {
        "A": {"ok_per_s": 300.0, "p99_ms": 2.0, "non_2xx": 0, "socket_errors": 0},
        "B": {"ok_per_s": 100.0, "p99_ms": 4.0, "non_2xx": 0, "socket_errors": 0},
    }
    rate, p99 = rate_and_p99("accepted[sanic]", "a", "b", [pair], 3.0, None)
    assert (rate.value, rate.verdict, rate.row) == (3.0, "PASS", "accepted[sanic]")
    assert (p99.value, p99.verdict) == (0.5, "INFO")
    line = skipped("accepted[granian]", "granian is not installed")
    assert (line.verdict, line.name, line.note) == (
        "MISSING",
        "(not run)",
        "granian is not installed",
    )


def test_the_chart_has_a_panel_per_row_with_servers_and_one_for_the_rest():
    def line(row: str, figure: str) -> Metric:
        return Metric(row, "m", "info", None, "x", "a", value=1.0, figure=figure)

    metrics = [
        line("accepted[sanic]", "200s/s"),
        line("drain", "jobs/s"),
        line("accepted[uvicorn]", "p99 ms"),
        line("openloop[sanic]", "p99 ms"),
    ]
    grouped = report.panels(metrics)
    assert list(grouped) == ["accepted", "other rows", "openloop"]
    assert [label for label, _ in grouped["accepted"]] == ["sanic\n200s/s", "uvicorn\np99 ms"]
    assert [label for label, _ in grouped["other rows"]] == ["drain\njobs/s"]
