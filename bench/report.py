"""The table on stdout, the raw figures as JSON, the chart as PNG."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from bench.measure import Metric

VERDICT_COLOURS = {"PASS": "#2e7d32", "SHORT": "#c62828", "INFO": "#757575"}
# What a panel's bars compare, where its name does not say.
PANEL_TITLES = {
    "accepted": "accepted: taskhub on each server / the seed",
    "refused": "refused: taskhub on each server / a bare Sanic 429",
    "ceiling": "ceiling: taskhub's refusals / the same server answering them as a constant",
    "openloop": "openloop: latency at a fixed rate, taskhub on each server / the seed",
}


def fmt(value: float | None, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if math.isinf(value):
        return "inf"
    if unit == "x":
        return f"{value:.2f}x"
    if abs(value) >= 100:
        return f"{value:,.0f}{unit}"
    return f"{value:.3g}{unit}"


def table(metrics: list[Metric]) -> str:
    header = ["row", "metric", "target", "measured", "A (taskhub)", "B (baseline)", "verdict"]
    lines = [header]
    for m in metrics:
        a = f"{fmt(m.a_value)} {m.figure}" if m.a_value is not None else "-"
        b = f"{fmt(m.b_value)} {m.figure}" if m.b_value is not None else "-"
        a = f"{m.a_label}: {a}" if m.a_label else a
        b = f"{m.b_label}: {b}" if m.b_label else ""
        lines.append([m.row, m.name, m.target_text(), fmt(m.value, m.unit), a, b, m.verdict])
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    out = []
    for index, row in enumerate(lines):
        out.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
        if index == 0:
            out.append("  ".join("-" * width for width in widths))
    notes = [f"  {m.row} / {m.name}: {m.note.strip()}" for m in metrics if m.note.strip()]
    if notes:
        out += ["", "notes:", *notes]
    return "\n".join(out)


def write_json(path: Path, meta: dict[str, Any], metrics: list[Metric]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {**meta, "metrics": [m.as_dict() for m in metrics]}
    path.write_text(json.dumps(data, indent=2, default=str, allow_nan=True) + "\n")


def panels(metrics: list[Metric]) -> dict[str, list[tuple[str, Metric]]]:
    """The chart's panels: one per row that has a row per server (``accepted``, its bars
    ``sanic``, ``uvicorn``, ...), and one for the other rows; each bar with its label."""
    grouped: dict[str, list[tuple[str, Metric]]] = {}
    for m in metrics:
        family, bracket, server = m.row.partition("[")
        panel, name = (family, server.rstrip("]")) if bracket else ("other rows", m.row)
        grouped.setdefault(panel, []).append((f"{name}\n{m.figure}", m))
    return grouped


def chart(path: Path, metrics: list[Metric], title: str) -> bool:
    """Bars of the ratio metrics (A/B, median of pairs) with their target marked, a
    panel per family of rows (:func:`panels`). Returns False when matplotlib is missing
    or there is nothing to draw."""
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return False
    drawn = [
        m
        for m in metrics
        if m.unit == "x" and m.value is not None and math.isfinite(m.value) and m.value == m.value
    ]
    if not drawn:
        return False
    grouped = panels(drawn)
    widest = max(len(bars) for bars in grouped.values())
    fig, axes = plt.subplots(
        len(grouped), 1, figsize=(max(6.0, 1.3 * widest), 3.6 * len(grouped)), squeeze=False
    )
    for ax, (name, bars) in zip(axes[:, 0], grouped.items(), strict=True):
        draw_bars(ax, bars)
        ax.set_title(PANEL_TITLES.get(name, name), fontsize=9, loc="left")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def draw_bars(ax: Any, bars: list[tuple[str, Metric]]) -> None:
    values = [m.value or 0.0 for _, m in bars]
    colours = [VERDICT_COLOURS.get(m.verdict, "#9e9e9e") for _, m in bars]
    xs = list(range(len(bars)))
    ax.bar(xs, values, color=colours, width=0.6)
    for x, (_, m) in zip(xs, bars, strict=True):
        ax.annotate(f"{m.value:.2f}x", (x, m.value or 0.0), ha="center", va="bottom", fontsize=8)
        if m.target is not None and m.op != "info":
            ax.hlines(m.target, x - 0.4, x + 0.4, colors="black", linestyles="dashed")
            target = f"target {'≥' if m.op == '>=' else '≤'} {m.target:g}x"
            ax.annotate(target, (x, m.target), ha="center", va="bottom", fontsize=7)
    ax.axhline(1.0, color="#bdbdbd", linewidth=0.8)
    ax.set_xticks(xs)
    ax.set_xticklabels([label for label, _ in bars], fontsize=7)
    ax.set_xlim(-0.6, max(len(bars), 4) - 0.4)  # a panel of few bars keeps their width
    ax.set_ylabel("taskhub / baseline\n(median of pairs)", fontsize=8)
    ax.set_ylim(0, max([*values, *(m.target or 0 for _, m in bars)]) * 1.15)
