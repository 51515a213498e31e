"""The configuration reference, generated from the pydantic models at build time.

A mkdocs hook (``hooks:`` in mkdocs.yml): on the page holding :data:`MARKER`, the
marker becomes one table per section of the config file, read from
``taskhub.config.models.Settings`` and from the ``Config`` of every built-in
component (``taskhub.hookspecs.KINDS``, the plugins ``load_plugins`` finds without
entry points or a plugins_dir). Nothing is copied by hand: a key added to a model
is in the next build, and ``tests/test_docs.py`` fails while any key lacks a
description or a row.

Importing this module needs taskhub and pydantic, not mkdocs, so the tests can
render the reference without the docs tools.
"""

from __future__ import annotations

import enum
import ipaddress
import json
import re
import types
import typing
from dataclasses import dataclass, field, replace
from typing import Annotated, Any, Literal

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from taskhub.config.models import Settings
from taskhub.hookspecs import KINDS
from taskhub.hub.plugins import PluginRegistry, load_plugins

MARKER = "<!-- taskhub:config-reference -->"
NETWORKS = {ipaddress.IPv4Network, ipaddress.IPv6Network}
SCALARS = {
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
    SecretStr: "string (secret)",
}
BOUNDS = (
    ("ge", "≥ {}"),
    ("gt", "> {}"),
    ("le", "≤ {}"),
    ("lt", "< {}"),
    ("min_length", "at least {} {}"),
    ("max_length", "at most {} {}"),
)

# Per kind: where its options sit in the file (a key prefix), its heading, a note.
KIND_PREFIX = {
    "limiter": "limiter.",
    "handler": "tasks.<name>.",
    "sink": "sinks[].",
    "queue": "queue.",
    "server": "server.",
    "authenticator": "auth.",
}
KIND_TITLE = {
    "limiter": "Limiters",
    "handler": "Task handlers",
    "sink": "Sinks",
    "queue": "Queues",
    "server": "Servers",
    "authenticator": "Authenticators",
}
KIND_NOTE = {
    "limiter": (
        "The options of `limiter:`, and of every rule under `limits.admission` and "
        "`limits.execution` beside its `name`, `key` and `shadow`."
    ),
    "handler": (
        "A task entry's own options, beside `type`, `cost` and the job options "
        "([`tasks.<name>`](#key-tasks-name))."
    ),
    "sink": "Each entry of `sinks:` names its `type`; its other keys are that sink's options.",
    "queue": (
        "The options of `queue:`. Its job options (`retries`, `timeout`, `retry_delay`, "
        "`retry_backoff`, `heartbeat`) are the defaults of every task."
    ),
    "server": "The options of `server:`.",
    "authenticator": "The options of `auth:`.",
}
# Sections of the core file whose ``type`` picks a component, and its kind.
SECTION_KINDS = {
    "server": "server",
    "auth": "authenticator",
    "limiter": "limiter",
    "queue": "queue",
    "sinks[]": "sink",
    "tasks.<name>": "handler",
    "limits.admission[]": "limiter",
    "limits.execution[]": "limiter",
}


@dataclass(frozen=True)
class Row:
    """One key of one table, and the model field it was read from."""

    key: str
    type: str
    default: str
    allowed: str
    description: str
    model: type[BaseModel]
    field: str


@dataclass
class Table:
    title: str
    anchor: str
    intro: str = ""
    level: int = 3
    rows: list[Row] = field(default_factory=list)


# --------------------------------------------------------------------------- reading a field


def unwrap(annotation: Any) -> tuple[Any, list[Any], str | None]:
    """The annotation without its ``Annotated`` layers, their constraints and description.

    A union stays a union, but an ``Annotated`` member (``Attempts | None``) gives
    its constraints and description too.
    """
    metadata: list[Any] = []
    description: str | None = None
    while typing.get_origin(annotation) is Annotated:
        annotation, *extra = typing.get_args(annotation)
        for item in extra:
            if isinstance(item, FieldInfo):
                metadata += item.metadata
                description = description or item.description
            else:
                metadata.append(item)
    if is_union(annotation):
        for member in typing.get_args(annotation):
            if typing.get_origin(member) is Annotated:
                _, inner, inner_description = unwrap(member)
                metadata += inner
                description = description or inner_description
    return annotation, metadata, description


def is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def members(annotation: Any) -> list[Any]:
    """A union's members other than None, each unwrapped; else the annotation itself."""
    if not is_union(annotation):
        return [annotation]
    return [unwrap(m)[0] for m in typing.get_args(annotation) if m is not type(None)]


def nullable(annotation: Any) -> bool:
    return is_union(annotation) and type(None) in typing.get_args(annotation)


def description_of(info: FieldInfo) -> str:
    """The field's own description, else the one its annotated type carries."""
    _, _, inherited = unwrap(info.annotation)
    return " ".join((info.description or inherited or "").split())


def section_of(annotation: Any) -> tuple[type[BaseModel], str] | None:
    """The model a field holds, and how: ``""`` one section, ``"[]"`` a list of them,
    ``".<name>"`` a mapping of names to them; None for a plain value."""
    for member in members(unwrap(annotation)[0]):
        origin, args = typing.get_origin(member), typing.get_args(member)
        if origin is list and (inner := section_of(args[0])) and inner[1] == "":
            return inner[0], "[]"
        if origin is dict and (inner := section_of(args[1])) and inner[1] == "":
            return inner[0], ".<name>"
        if isinstance(member, type) and issubclass(member, BaseModel):
            return member, ""
    return None


def type_name(annotation: Any) -> str:
    base = unwrap(annotation)[0]
    found = members(base)
    if set(found) <= NETWORKS:
        name = "IP address or network"
    elif len(found) > 1:
        name = " or ".join(type_name(m) for m in found)
    else:
        name = single_type_name(found[0])
    return f"{name} or null" if nullable(base) else name


def single_type_name(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return "string"
    if origin is list:
        return f"list of {plural(type_name(args[0]))}"
    if origin is dict:
        return f"mapping of names to {plural(type_name(args[1]))}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "string"
    return SCALARS.get(annotation, getattr(annotation, "__name__", str(annotation)))


def plural(noun: str) -> str:
    if noun == "IP address or network":
        return "IP addresses or networks"
    return noun if noun.endswith("s") else f"{noun}s"


def allowed_values(info: FieldInfo) -> str:
    """Choices, bounds and patterns, as a reader would write them."""
    base, metadata, _ = unwrap(info.annotation)
    found = members(base)
    parts: list[str] = []
    for member in found:
        if typing.get_origin(member) is Literal:
            parts.append("one of " + ", ".join(code(v) for v in typing.get_args(member)))
        elif isinstance(member, type) and issubclass(member, enum.Enum):
            parts.append("one of " + ", ".join(code(v.value) for v in member))
    counted = "items" if typing.get_origin(found[0]) in (list, dict) else "characters"
    for item in [*metadata, *info.metadata]:
        for attribute, text in BOUNDS:
            value = getattr(item, attribute, None)
            if value is not None:
                unit = counted[:-1] if value == 1 else counted
                parts.append(text.format(number(value), unit))
        pattern = getattr(item, "pattern", None)
        if pattern is not None:
            parts.append(f"matches {code(pattern)}")
    return "; ".join(parts)


def number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"{value:,}".replace(",", " ") if isinstance(value, int) else str(value)


def code(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    fence = "``" if "`" in text else "`"
    return f"{fence}{text}{fence}"


def yaml_value(value: Any) -> str:
    """A value in YAML flow style: ``[{type: file_log}]``, ``null``, ``memory://``."""
    if isinstance(value, BaseModel):
        return yaml_value(value.model_dump(mode="json", exclude_defaults=True))
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {yaml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(yaml_value(v) for v in value) + "]"
    if isinstance(value, enum.Enum):
        return yaml_value(value.value)
    if isinstance(value, str):
        return value or '""'
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return json.dumps(value)


def default_of(info: FieldInfo) -> str:
    if info.default_factory is not None:
        return code(yaml_value(info.default_factory()))  # type: ignore[call-arg]
    if info.default is PydanticUndefined:
        return "required"
    return code(yaml_value(info.default))


# --------------------------------------------------------------------------- the tables


def anchor(key: str) -> str:
    """The id of the table of the section at ``key`` (``limits.deny_cache``)."""
    return "key-" + (re.sub(r"[^a-z0-9_]+", "-", key.lower()).strip("-") or "top")


def kind_anchor(kind: str) -> str:
    return "kind-" + anchor(KIND_TITLE[kind])[len("key-") :]


def model_tables(
    registry: PluginRegistry,
    model: type[BaseModel],
    key: str,
    title: str,
    intro: str,
    *,
    shown: str | None = None,
) -> list[Table]:
    """The table of ``model``'s keys, the section at ``key``, then those of its sections.

    ``shown`` is the section's key as written in the file, when it is not ``key``:
    a component's options are ``server.port``, whichever server it is.
    """
    shown = key if shown is None else shown
    prefix = f"{shown}." if shown else ""
    table = Table(title, anchor(key), " ".join(intro.split()))
    tables = [table]
    kind = SECTION_KINDS.get(key)
    for name, info in model.model_fields.items():
        row = Row(
            key=prefix + name,
            type=type_name(info.annotation),
            default=default_of(info),
            allowed=allowed_values(info),
            description=text(description_of(info)),
            model=model,
            field=name,
        )
        if name == "type" and kind is not None:
            row = type_row(registry, row, kind, key)
        held = section_of(info.annotation)
        if held is not None:
            child, how = held
            child_key, child_shown = f"{key}.{name}{how}".lstrip("."), row.key + how
            child_kind = SECTION_KINDS.get(child_key)
            default = KINDS[child_kind].default if child_kind else None
            if default and row.default == "`{}`":
                row = replace(row, default=code(f"{{type: {default}}}"))
            elif row.default == "`{}`" and how == "":
                row = replace(row, default="its keys' defaults")
            link = f"[`{child_shown}`](#{anchor(child_key)})"
            row = replace(row, description=f"{row.description} ({link})")
            doc = child.__doc__ if child.__doc__ != BaseModel.__doc__ else ""
            if child_kind is not None and set(child.model_fields) == {"type"}:
                doc = f"Picks the {child_kind}: `type`, and that {child_kind}'s options."
            tables += model_tables(
                registry, child, child_key, f"`{child_shown}`", doc or "", shown=child_shown
            )
        table.rows.append(row)
    return tables


def text(value: str) -> str:
    """Plain text for a Markdown table cell: no HTML, emphasis or column break."""
    for raw, escaped in (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"), ("*", "\\*"), ("|", "\\|")):
        value = value.replace(raw, escaped)
    return value


def type_row(registry: PluginRegistry, row: Row, kind: str, section: str) -> Row:
    """``type`` in a section that picks a component: the built-in choices and the default."""
    names = ", ".join(code(n) for n in registry.names(kind))
    article = "an" if kind[0] in "aeiou" else "a"
    link = f"[{KIND_TITLE[kind]}](#{kind_anchor(kind)})"
    allowed = f"{article} {kind} name: built in {names} ({link}), or a plugin's"
    default = row.default
    if section == "tasks.<name>":
        default = "the task's name"
    elif KINDS[kind].default is not None and row.default == "`null`":
        default = code(KINDS[kind].default)
    return replace(row, allowed=allowed, default=default)


def core_tables(registry: PluginRegistry) -> list[Table]:
    """``Settings`` and every section below it, each a table, parents first."""
    return model_tables(registry, Settings, "", "Top level", "")


def component_tables(registry: PluginRegistry) -> list[Table]:
    """The ``Config`` of every registered component, by kind, with its sections."""
    tables: list[Table] = []
    for kind in KINDS:
        tables.append(Table(KIND_TITLE[kind], kind_anchor(kind), KIND_NOTE[kind]))
        for name in registry.names(kind):
            cls = registry.get(kind, name)
            own = cls.__doc__ if cls.__doc__ != inherited_doc(cls) else None
            intro = (own or "").strip().split("\n\n")[0]
            shown = KIND_PREFIX[kind].rstrip(".")
            found = model_tables(
                registry, cls.Config, f"{kind}.{name}", f"`{name}`", intro, shown=shown
            )
            for table in found:
                table.level = 4
            tables += found
    return tables


def inherited_doc(cls: type) -> str | None:
    """The docstring a component inherits from its kind's base class."""
    for base in cls.__mro__[1:]:
        if base.__doc__:
            return base.__doc__
    return None


def builtin_registry() -> PluginRegistry:
    """The built-in components alone: no entry points, no plugins_dir."""
    return load_plugins(None, entry_points=False)


def all_tables(registry: PluginRegistry | None = None) -> list[Table]:
    registry = registry or builtin_registry()
    return core_tables(registry) + component_tables(registry)


def all_rows(registry: PluginRegistry | None = None) -> list[Row]:
    """Every row of every table: one per key of the file."""
    return [row for table in all_tables(registry) for row in table.rows]


def render_table(table: Table) -> str:
    lines = [f"{'#' * table.level} {table.title} {{ #{table.anchor} }}", ""]
    if table.intro:
        lines += [table.intro, ""]
    if table.rows:
        lines += [
            "| key | type | default | allowed | description |",
            "| --- | --- | --- | --- | --- |",
        ]
        for row in table.rows:
            cells = (f"`{row.key}`", row.type, row.default, row.allowed, row.description)
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    elif table.level == 4:
        lines += ["No options.", ""]
    return "\n".join(lines)


def render(registry: PluginRegistry | None = None) -> str:
    registry = registry or builtin_registry()
    parts = ["## Core keys", ""]
    parts += [render_table(t) for t in core_tables(registry)]
    parts += ["## Built-in components", ""]
    parts += [render_table(t) for t in component_tables(registry)]
    return "\n".join(parts)


def on_page_markdown(markdown: str, **_: Any) -> str:
    """mkdocs hook: the generated tables where the page holds the marker."""
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, render())
