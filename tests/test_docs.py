"""The documentation site against the code: config keys, public names, code blocks, offline.

These run without the docs tools: the mkdocs hooks in docs/hooks/ import only taskhub,
pydantic and the standard library. ``make docs`` builds the site itself.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import sys
import typing
from pathlib import Path
from types import ModuleType

import pytest
from pydantic import BaseModel

import taskhub
from taskhub.config.models import Settings
from taskhub.hookspecs import KINDS
from tests.support.configs import ROOT

DOCS = ROOT / "docs"


def load_hook(name: str) -> ModuleType:
    path = DOCS / "hooks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"docs_hooks_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


config_reference = load_hook("config_reference")
offline = load_hook("offline")
docstrings = load_hook("docstrings")


# --------------------------------------------------------------------------- config keys


def models_in(annotation: object) -> set[type[BaseModel]]:
    """Every pydantic model an annotation holds, however nested (lists, unions, Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return {annotation}
    found: set[type[BaseModel]] = set()
    for arg in typing.get_args(annotation):
        found |= models_in(arg)
    return found


def config_fields() -> set[tuple[type[BaseModel], str]]:
    """Every field of the core config and of every built-in component's options, found by
    walking the models themselves, not through the generator."""
    registry = config_reference.builtin_registry()
    roots: list[type[BaseModel]] = [Settings]
    for kind in KINDS:
        roots += [registry.get(kind, name).Config for name in registry.names(kind)]
    seen: set[type[BaseModel]] = set()
    fields: set[tuple[type[BaseModel], str]] = set()
    while roots:
        model = roots.pop()
        if model in seen:
            continue
        seen.add(model)
        for name, info in model.model_fields.items():
            fields.add((model, name))
            roots += models_in(info.annotation)
    return fields


def test_the_walk_finds_core_and_component_keys() -> None:
    fields = config_fields()
    names = {(model.__name__, name) for model, name in fields}
    assert ("RedisSettings", "url") in names
    assert ("DenyCacheSettings", "max_keys") in names
    assert ("TaskSection", "retries") in names
    assert ("ApiKey", "user_id") in names  # a section inside a component's options
    assert sum(1 for model, _ in fields if model.__name__ == "Config") >= 30


def test_every_config_key_has_a_description() -> None:
    missing = sorted(
        f"{model.__module__}.{model.__qualname__}.{name}"
        for model, name in config_fields()
        if not config_reference.description_of(model.model_fields[name])
    )
    assert not missing, "config keys without a description= (add one to the Field):\n" + (
        "\n".join(missing)
    )


def test_every_config_key_is_in_the_generated_reference() -> None:
    rows = config_reference.all_rows()
    documented = {(row.model, row.field) for row in rows}
    missing = sorted(f"{model.__qualname__}.{name}" for model, name in config_fields() - documented)
    assert not missing, f"config keys missing from the reference: {missing}"
    rendered = config_reference.render()
    for row in rows:
        assert f"| `{row.key}` |" in rendered, row.key
        assert row.description, row.key


def test_the_reference_shows_types_defaults_and_bounds() -> None:
    rendered = config_reference.render()
    assert "| `redis.socket_timeout` | number | `2` | > 0; ≤ 60 |" in rendered
    assert "| `limits.fail_mode` | string | `closed` | one of `closed`, `open`, `local` |" in (
        rendered
    )
    assert "| `queue.shard_by` | string | `user` | one of `user`, `round_robin` |" in rendered
    assert "| `server.port` | integer | `3000` | ≥ 0; ≤ 65 535 |" in rendered
    assert "| `sinks[].type` | string | required |" in rendered
    assert "| `auth.keys[].key` | string | required | at least 16 characters;" in rendered
    assert "| `tasks.<name>.retries` | integer or null | `null` | ≥ 1; ≤ 100 |" in rendered


def test_the_reference_page_holds_the_marker() -> None:
    page = (DOCS / "config-reference.md").read_text()
    assert config_reference.MARKER in page
    assert "docs/hooks/config_reference.py" in (ROOT / "mkdocs.yml").read_text()


# --------------------------------------------------------------------------- API reference


def test_every_public_name_is_in_the_api_reference() -> None:
    api = (DOCS / "plugins" / "api.md").read_text()
    context = (DOCS / "plugins" / "context.md").read_text()
    assert "::: taskhub.context" in context
    rendered_elsewhere = {"__version__", "hookimpl"}  # named in the page's text
    for name in taskhub.__all__:
        if name in rendered_elsewhere:
            assert f"`{name}`" in api or f"`taskhub.{name}`" in api, name
        elif getattr(taskhub, name).__module__ == "taskhub.context":
            assert f"`{name}`" in api, name  # pointed to from the API page
        else:
            assert f"::: taskhub.{name}\n" in api, f"{name} is not in docs/plugins/api.md"


# --------------------------------------------------------------------------- code blocks


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, re.MULTILINE | re.DOTALL)


@pytest.mark.parametrize(
    "page",
    sorted(p.relative_to(ROOT).as_posix() for p in [*DOCS.rglob("*.md"), ROOT / "README.md"]),
)
def test_python_examples_parse(page: str) -> None:
    for block in python_blocks((ROOT / page).read_text()):
        ast.parse(block)


def test_every_page_is_in_the_nav() -> None:
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in DOCS.rglob("*.md"):
        assert page.relative_to(DOCS).as_posix() in nav, page


# --------------------------------------------------------------------------- offline


def test_offline_check_finds_remote_assets() -> None:
    html = """<html><head>
    <link rel="stylesheet" href="https://fonts.googleapis.com/css?family=Roboto">
    <link rel="icon" href="//cdn.example.com/favicon.png">
    <script src="https://cdn.jsdelivr.net/npm/mermaid.min.js"></script>
    <style>@import url("https://example.com/a.css"); body {background: url(http://x/y.png)}</style>
    </head><body>
    <img src="https://example.com/a.png" srcset="a.png 1x, https://example.com/b.png 2x">
    <div style="background: url('https://example.com/c.png')"></div>
    </body></html>"""
    found = offline.html_assets(html)
    assert len(found) == 8, found
    css = '@font-face {src: url("https://fonts.gstatic.com/r.woff2")} @import "//x.org/a.css";'
    assert offline.css_assets(css) == ["https://fonts.gstatic.com/r.woff2", "//x.org/a.css"]


def test_offline_check_allows_links_and_local_assets() -> None:
    html = """<html><head>
    <link rel="stylesheet" href="assets/stylesheets/main.css">
    <script src="../assets/javascripts/bundle.js"></script>
    <style>body {background: url(data:image/svg+xml;base64,AAAA)}</style>
    </head><body>
    <a href="https://github.com/tobymao/saq">SAQ</a>
    <img src="bench.png"><svg xmlns="http://www.w3.org/2000/svg"></svg>
    </body></html>"""
    assert offline.html_assets(html) == []


def test_offline_check_scans_a_site(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text('<script src="js/a.js"></script>')
    (tmp_path / "assets").mkdir()
    (tmp_path / "assets" / "x.css").write_text("a{background:url(https://x.org/i.png)}")
    assert offline.site_assets(tmp_path) == {"assets/x.css": ["https://x.org/i.png"]}


def test_sphinx_roles_become_plain_code() -> None:
    html = "the :class:<code>PluginContext</code> and :meth:<code>connect_redis</code>"
    assert docstrings.strip_roles(html) == (
        "the <code>PluginContext</code> and <code>connect_redis</code>"
    )
