"""A config file as parsed: its values, the line of every YAML path, and which are secret."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from taskhub.config.paths import Loc, render_path
from taskhub.config.secrets import is_secret_path
from taskhub.errors import Problem


@dataclass
class RawConfig:
    """The parsed file: values after interpolation, where each path sits, which are secret."""

    source: str
    data: dict[str, Any]
    lines: dict[Loc, int] = field(default_factory=dict)
    secret_paths: set[Loc] = field(default_factory=set)

    def line_of(self, loc: Loc) -> int | None:
        for end in range(len(loc), -1, -1):
            line = self.lines.get(tuple(loc[:end]))
            if line is not None:
                return line
        return None

    def is_secret(self, loc: Loc) -> bool:
        return is_secret_path(loc, self.secret_paths)

    def problem(self, loc: Loc, message: str) -> Problem:
        return Problem(render_path(loc), message, self.line_of(loc))
