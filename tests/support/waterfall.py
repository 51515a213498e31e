"""Draw exported spans as a trace waterfall (HTML, then PNG through headless Chromium):
the picture in docs/tracing.md, made from the spans test_tracing_processes.py collects.

    TASKHUB_TRACE_DUMP=/tmp/trace.json pytest tests/test_tracing_processes.py -k single
    python -m tests.support.waterfall /tmp/trace.json docs/tracing.png
"""

from __future__ import annotations

import html
import json
import sys
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
KINDS = {1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}
SHOWN = ("http.route", "http.response.status_code", "taskhub.outcome", "taskhub.rule")
SHOWN += ("taskhub.job_id", "taskhub.attempt", "taskhub.sink")


def ordered(spans: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    """Depth-first from the roots, children by start time: (depth, span)."""
    ids = {span["span_id"] for span in spans}
    children: dict[str, list[dict[str, Any]]] = {}
    for span in spans:
        parent = span["parent_span_id"] if span["parent_span_id"] in ids else ""
        children.setdefault(parent, []).append(span)
    rows: list[tuple[int, dict[str, Any]]] = []

    def walk(parent: str, depth: int) -> None:
        for span in sorted(children.get(parent, []), key=lambda s: s["start_ns"]):
            rows.append((depth, span))
            walk(span["span_id"], depth + 1)

    walk("", 0)
    return rows


def page(spans: list[dict[str, Any]]) -> str:
    start = min(s["start_ns"] for s in spans)
    total = max(s["end_ns"] for s in spans) - start or 1
    trace_id = spans[0]["trace_id"]
    remote_parent = {s["parent_span_id"] for s in spans} - {s["span_id"] for s in spans} - {""}
    rows = []
    for depth, span in ordered(spans):
        left = 100 * (span["start_ns"] - start) / total
        width = max(0.3, 100 * (span["end_ns"] - span["start_ns"]) / total)
        ms = (span["end_ns"] - span["start_ns"]) / 1e6
        role = span["resource"].get("taskhub.role", "")
        service = span["resource"].get("service.name", "")
        shown = [f"{k}={span['attributes'][k]}" for k in SHOWN if k in span["attributes"]]
        attributes = html.escape("  ".join(shown))
        rows.append(
            f'<div class="row"><div class="name" style="padding-left:{depth * 18 + 6}px">'
            f"<b>{html.escape(span['name'])}</b>"
            f'<span class="svc {role}">{html.escape(service)} · {html.escape(role)}</span>'
            f'<div class="attrs">{KINDS.get(span["kind"], "")}  {attributes}</div></div>'
            f'<div class="lane"><div class="bar {role}" style="left:{left:.2f}%;'
            f'width:{width:.2f}%"></div></div><div class="ms">{ms:.2f} ms</div></div>'
        )
    parent_note = (
        f"the caller's span {', '.join(sorted(remote_parent))} (from its traceparent)"
        if remote_parent
        else "none"
    )
    return f"""<!doctype html><html><head><meta charset="utf-8"><style>
body {{ font: 13px system-ui, sans-serif; margin: 16px; color: #1f2328; width: 1180px; }}
h1 {{ font-size: 16px; margin: 0 0 4px; }} .sub {{ color: #57606a; margin-bottom: 12px; }}
.row {{ display: flex; border-top: 1px solid #d8dee4; min-height: 44px; }}
.name {{ width: 470px; padding: 5px 0; }} .attrs {{ color: #57606a; font-size: 11px;
  font-family: ui-monospace, monospace; margin-top: 2px; }}
.svc {{ font-size: 11px; margin-left: 8px; padding: 1px 6px; border-radius: 8px; }}
.lane {{ position: relative; flex: 1; }}
.bar {{ position: absolute; top: 14px; height: 14px; border-radius: 3px; }}
.server {{ background: #b6e3ff; }} .bar.server {{ background: #0969da; }}
.worker {{ background: #d2f4d3; }} .bar.worker {{ background: #1a7f37; }}
.ms {{ width: 70px; padding-top: 13px; text-align: right; font-size: 11px; color: #57606a; }}
</style></head><body>
<h1>Trace {trace_id}</h1>
<div class="sub">{len(spans)} spans from two processes (taskhub serve, taskhub worker),
{total / 1e6:.2f} ms end to end; parent of the request: {html.escape(parent_note)}</div>
{"".join(rows)}
</body></html>"""


def render(spans_json: Path, png: Path) -> None:
    from playwright.sync_api import sync_playwright  # noqa: PLC0415 (only to draw)

    spans = json.loads(spans_json.read_text())
    # The single submission's trace (the test's batch is another).
    trace_id = next((s["trace_id"] for s in spans if s["name"] == "POST /task"), None)
    spans = [s for s in spans if trace_id is None or s["trace_id"] == trace_id]
    document = png.with_suffix(".html")
    document.write_text(page(spans))
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        tab = browser.new_page(viewport={"width": 1212, "height": 200}, device_scale_factor=1)
        tab.goto(document.absolute().as_uri())
        tab.screenshot(path=str(png), full_page=True)
        browser.close()
    document.unlink()


if __name__ == "__main__":
    render(Path(sys.argv[1]), Path(sys.argv[2]))
