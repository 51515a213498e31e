"""Config locations: a YAML path as a tuple (``("limits", "admission", 0)``) and as text."""

from __future__ import annotations

Loc = tuple[str | int, ...]


def render_path(loc: Loc) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out
