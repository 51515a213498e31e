"""Which rows a run measures, in which order: ``--only`` and ``--servers``.

The HTTP rows that compare taskhub on one server have a row per server
(``accepted[sanic]``, ``accepted[uvicorn]``, ...). ``--only accepted`` runs it on every
server chosen (``--servers``, or every one this machine has); ``--only
accepted[sanic]`` (or ``accepted[sanic,granian]``) on those named. A server that was
named but is not here gets a line saying why in the table; one that was not named is
left out with a note.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from bench import latency, rows, servers
from bench.fairness import fairness
from bench.measure import Metric
from bench.scale import scale


@dataclass(frozen=True)
class Row:
    run: Callable[..., list[Metric]]  # (bench) or, per server, (bench, server)
    per_server: bool = False
    default: bool = True  # in a run without --only


# The default run's order: the open-loop rows take the seed's rate from accepted's.
ROWS: dict[str, Row] = {
    "accepted": Row(rows.accepted, per_server=True),
    "refused": Row(rows.refused, per_server=True),
    "ceiling": Row(rows.ceiling, per_server=True),
    "openloop": Row(latency.openloop_row, per_server=True),
    "alternative": Row(rows.alternative),
    "drain": Row(rows.drain),
    "fairness": Row(fairness),
    "e2e": Row(rows.end_to_end),
    "memory": Row(rows.memory),
    # Tracing on against off (docs/tracing.md): asked for by name.
    "traced_accepted": Row(rows.traced_accepted, per_server=True, default=False),
    "traced_refused": Row(rows.traced_refused, per_server=True, default=False),
    # Its own Redis Cluster, and another question (how taskhub grows with processes).
    "scale": Row(scale, default=False),
}
DEFAULT_ROWS = [name for name, row in ROWS.items() if row.default]
TOKEN = re.compile(r"([a-z0-9_]+)(?:\[([^\]]*)\])?")


class PlanError(ValueError):
    """An unknown row or server, or a server named for a row that has none."""


@dataclass(frozen=True)
class Planned:
    """One row of the run: ``label`` as the table names it, and why it cannot run
    here when it cannot (a server that was named but is not available)."""

    label: str
    row: str
    server: str | None = None
    skip: str = ""


def split_rows(only: str) -> list[str]:
    """``accepted[sanic,uvicorn],drain`` -> ``["accepted[sanic,uvicorn]", "drain"]``:
    commas inside brackets do not split."""
    parts, depth, current = [], 0, ""
    for char in only:
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [part.strip() for part in parts if part.strip()]


def server_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in servers.SERVERS]
    if unknown or not names:
        raise PlanError(
            f"unknown server(s): {', '.join(unknown) or '(none given)'}; "
            f"choose from {', '.join(servers.SERVERS)}"
        )
    return names


def plan(
    only: str | None, chosen: str | None, missing: Mapping[str, str]
) -> tuple[list[Planned], list[str]]:
    """The rows to run, and notes about the servers left out. ``only`` and ``chosen``
    are ``--only`` and ``--servers`` as given; ``missing`` says why each server cannot
    run here ("" when it can)."""
    explicit = server_list(chosen) if chosen else None
    planned: list[Planned] = []
    left_out: set[str] = set()
    for token in split_rows(only) if only else DEFAULT_ROWS:
        match = TOKEN.fullmatch(token)
        if match is None or match.group(1) not in ROWS:
            raise PlanError(f"unknown row {token!r}; choose from {', '.join(ROWS)}")
        name, bracket = match.group(1), match.group(2)
        if not ROWS[name].per_server:
            if bracket is not None:
                raise PlanError(f"row {name!r} has no server dimension: drop [{bracket}]")
            planned.append(Planned(name, name))
            continue
        if bracket is not None:
            named = server_list(bracket)
        elif explicit is not None:
            named = explicit
        else:
            named = [s for s in servers.SERVERS if not missing.get(s)]
            left_out |= {s for s in servers.SERVERS if missing.get(s)}
        planned += [Planned(f"{name}[{s}]", name, s, missing.get(s, "")) for s in named]
    notes = [f"server {s} left out: {missing[s]}" for s in servers.SERVERS if s in left_out]
    return planned, notes
