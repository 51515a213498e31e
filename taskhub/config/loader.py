"""Read a config file: parse the YAML, index every path's line, interpolate the environment.

Validation is :mod:`taskhub.config.models`' (the core keys) and the kernel's (each
component's own options); every error names the YAML path and its line.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from taskhub.config.interpolation import interpolate
from taskhub.config.paths import Loc, render_path
from taskhub.config.raw import RawConfig
from taskhub.errors import ConfigError, Problem


def load_file(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> RawConfig:
    """Read, parse and interpolate a config file; any failure is a ConfigError."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(source, [Problem("", "file not found")]) from None
    except IsADirectoryError:
        raise ConfigError(source, [Problem("", "is a directory, not a config file")]) from None
    except PermissionError:
        raise ConfigError(source, [Problem("", "permission denied")]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(source, [Problem("", f"not UTF-8 text ({exc.reason})")]) from None
    return load_text(text, source, os.environ if env is None else env)


def load_text(text: str, source: str, env: Mapping[str, str]) -> RawConfig:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = mark.line + 1 if mark is not None else None
        message = f"not valid YAML: {exc.problem or exc}"
        raise ConfigError(source, [Problem("", message, line)]) from None
    except yaml.YAMLError as exc:
        raise ConfigError(source, [Problem("", f"not valid YAML: {exc}")]) from None
    finally:
        loader.dispose()
    if data is None:
        data = {}
    if not isinstance(data, dict):
        found = type(data).__name__
        raise ConfigError(source, [Problem("", f"must be a mapping of options, not a {found}")])
    raw = RawConfig(source=source, data=data)
    problems: list[Problem] = []
    _index_lines(node, (), raw, problems)
    raw.data = interpolate(data, (), env, raw, problems)
    if problems:
        raise ConfigError(source, problems)
    return raw


def _index_lines(node: yaml.Node | None, loc: Loc, raw: RawConfig, problems: list[Problem]) -> None:
    """Record the line of every path, and reject duplicate keys (YAML would keep the last)."""
    if node is None:
        return
    raw.lines.setdefault(loc, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for key_node, value_node in node.value:
            key = key_node.value
            if key in seen:
                problems.append(
                    Problem(render_path((*loc, key)), "duplicate key", key_node.start_mark.line + 1)
                )
            seen.add(key)
            raw.lines[(*loc, key)] = key_node.start_mark.line + 1
            _index_lines(value_node, (*loc, key), raw, problems)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _index_lines(item, (*loc, index), raw, problems)
