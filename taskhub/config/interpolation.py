"""``${VAR}`` and ``${VAR:-default}`` in config values, read from the environment.

The default applies when VAR is unset or empty, as in the shell; ``$${`` writes a
literal ``${``. Interpolation happens per scalar after parsing, so an environment
value can never change the YAML structure. A variable whose name says it is a
secret marks its value secret.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from taskhub.config.paths import Loc
from taskhub.config.raw import RawConfig
from taskhub.config.secrets import SECRET_NAME
from taskhub.errors import Problem

INTERPOLATION = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
VARIABLE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?$", re.DOTALL)


def interpolate(
    value: Any, loc: Loc, env: Mapping[str, str], raw: RawConfig, problems: list[Problem]
) -> Any:
    if isinstance(value, dict):
        return {k: interpolate(v, (*loc, k), env, raw, problems) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, (*loc, i), env, raw, problems) for i, v in enumerate(value)]
    if not isinstance(value, str) or "$" not in value:
        return value

    def substitute(match: re.Match[str]) -> str:
        text = match.group(0)
        if text == "$${":
            return "${"
        body = match.group(1)
        parsed = VARIABLE.match(body) if body is not None else None
        if parsed is None:
            problems.append(
                raw.problem(loc, f"malformed {text!r}: write ${{NAME}} or ${{NAME:-default}}")
            )
            return text
        name, default = parsed.group(1), parsed.group(2)
        if SECRET_NAME.search(name):
            raw.secret_paths.add(loc)
        current = env.get(name)
        if default is not None and not current:
            return default
        if current is None:
            problems.append(
                raw.problem(
                    loc,
                    f"environment variable {name} is not set "
                    f"(set it, or give a default: ${{{name}:-value}})",
                )
            )
            return text
        return current

    return INTERPOLATION.sub(substitute, value)
