"""The Grafana dashboard (docs/grafana/taskhub.json) queries only what taskhub exports.

Every PromQL expression in it is parsed (Grafana's variables replaced by values of
their kind first), and every metric it selects must be in a live ``/metrics``: a
``taskhub run`` on the real Redis, scraped after it admitted, refused and ran jobs,
so each counter and histogram has its samples.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import promql_parser
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.configs import ROOT, config_dict
from tests.support.namespaces import Namespace
from tests.support.processes import wait_until

DASHBOARD = ROOT / "docs" / "grafana" / "taskhub.json"
# What Grafana puts in place of its variables before it sends a query.
# The expressions around one other (``.expr``).
WRAPPERS = (
    promql_parser.AggregateExpr,
    promql_parser.ParenExpr,
    promql_parser.SubqueryExpr,
    promql_parser.UnaryExpr,
)
VARIABLES = {"__rate_interval": "1m", "__interval": "15s", "__range": "1h", "task": ".*"}


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row holds its panels


def expressions(board: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expr) of every query, the template variables' own included."""
    found = [
        (panel["title"], target["expr"])
        for panel in panels(board)
        for target in panel.get("targets", [])
    ]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((\w+), *\w+\)", variable["query"]["query"])
            assert match, variable  # Grafana's own function, not PromQL: its metric only
            found.append((f"${variable['name']}", match.group(1)))
    return found


def substituted(expr: str) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in VARIABLES, f"{name}: a variable this test does not know"
        return VARIABLES[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, expr)


def selected(node: Any) -> Iterator[str]:
    """Every metric name a parsed PromQL expression selects."""
    if isinstance(node, promql_parser.VectorSelector):
        assert node.name, f"{node}: select metrics by name"
        yield node.name
    elif isinstance(node, promql_parser.MatrixSelector):
        yield from selected(node.vector_selector)
    elif isinstance(node, promql_parser.BinaryExpr):
        yield from selected(node.lhs)
        yield from selected(node.rhs)
    elif isinstance(node, promql_parser.Call):
        for arg in node.args:
            yield from selected(arg)
    elif isinstance(node, WRAPPERS):
        yield from selected(node.expr)


def queried() -> dict[str, set[str]]:
    """Metric name -> the panels that query it."""
    names: dict[str, set[str]] = {}
    for title, expr in expressions(dashboard()):
        try:
            parsed = promql_parser.parse(substituted(expr))
        except ValueError as exc:
            pytest.fail(f"panel {title!r}: {expr!r} is not PromQL: {exc}")
        for name in selected(parsed):
            names.setdefault(name, set()).add(title)
    return names


def test_the_dashboard_is_well_formed() -> None:
    board = dashboard()
    assert board["uid"] and board["title"] == "taskhub"
    ids = [panel["id"] for panel in panels(board)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {variable["name"] for variable in board["templating"]["list"]}
    for panel in panels(board):
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            used = set(re.findall(r"\$\{?(\w+)", target["expr"]))
            assert used - {"__rate_interval"} <= variables, (panel["title"], used)
    assert len(queried()) >= 6


@pytest.mark.servers("sanic")
def test_every_metric_the_dashboard_queries_is_exported(
    spawn: Any, ns: Namespace, redis_url: str, tmp_path: Path
) -> None:
    limiter = {"type": "token_bucket", "capacity": 2, "refill": 1, "period": 600}
    taskhub = spawn(config_dict(ns, redis_url, limiter=limiter), "run")
    statuses = [
        httpx.post(f"{taskhub.url}/task", json={"user_id": "grafana"}, timeout=10).status_code
        for _ in range(3)
    ]
    assert statuses == [200, 200, 429]
    bad = httpx.post(f"{taskhub.url}/task", content=b"{", timeout=10)
    assert bad.status_code == 400
    log = tmp_path / "task.log"
    assert wait_until(lambda: log.exists() and len(log.read_text().splitlines()) == 2, 20)

    def exported() -> set[str]:
        text = httpx.get(f"{taskhub.url}/metrics", timeout=10).text
        return {s.name for f in text_string_to_metric_families(text) for s in f.samples}

    # The worker counts a job after its sinks wrote it: wait for the count too.
    names = wait_until(lambda: (n := exported()) >= {"taskhub_job_seconds_count"} and n, 20)
    assert names, "no job ran"
    missing = {name: sorted(titles) for name, titles in queried().items() if name not in names}
    assert not missing, f"queried by the dashboard but not in /metrics: {missing}"
