"""Plugin loading from every source, and every way a plugin can be wrong."""

from __future__ import annotations

import inspect
import re
import textwrap
from pathlib import Path

import pytest

from taskhub import hookspecs
from taskhub.errors import PluginError, UnknownComponentError
from taskhub.hub.plugins import load_plugins
from tests.support.configs import ROOT
from tests.support.plugin_sources import limiter_plugin
from tests.support.processes import run_cli


def write_plugin(directory: Path, filename: str, source: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / filename
    path.write_text(textwrap.dedent(source))
    return path


def test_builtins_register_through_the_hooks() -> None:
    registry = load_plugins(None, (), entry_points=False)
    assert registry.names("limiter") == [
        "concurrency",
        "fixed_window",
        "gcra",
        "sliding_window",
        "token_bucket",
    ]
    assert registry.names("server") == ["httptools", "sanic"]
    assert registry.names("queue") == ["saq"]
    assert registry.names("sink") == ["console", "file_log", "webhook"]
    assert registry.names("handler") == ["log_completion"]
    sources = {info.name: info.source for info in registry.plugins}
    assert sources["taskhub.builtin.limiters.token_bucket"] == "built-in"
    registration = registry.registration("limiter", "token_bucket")
    assert registration.plugin == "taskhub.builtin.limiters.token_bucket"


def test_the_shipped_examples_load_from_plugins_dir() -> None:
    registry = load_plugins(ROOT / "plugins", (), entry_points=False)
    assert "daily_quota" in registry.names("limiter")
    assert "count_words" in registry.names("handler")
    info = {i.name: i for i in registry.plugins}["plugins/count_words.py"]
    assert info.source == "plugins_dir" and info.components == {"handler": ["count_words"]}


def test_plugins_dir_loads_files_and_packages_and_skips_private(tmp_path: Path) -> None:
    write_plugin(tmp_path, "alpha.py", limiter_plugin("Alpha", "alpha"))
    write_plugin(tmp_path / "beta", "__init__.py", limiter_plugin("Beta", "beta"))
    write_plugin(tmp_path, "_private.py", "raise RuntimeError('must not be imported')")
    write_plugin(tmp_path, "notes.txt", "not python")
    registry = load_plugins(tmp_path, (), entry_points=False)
    assert {"alpha", "beta"} <= set(registry.names("limiter"))


def test_dotted_path_from_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_plugin(tmp_path, "acme_limits.py", limiter_plugin("Acme", "acme"))
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = load_plugins(None, ["acme_limits"], entry_points=False)
    assert registry.registration("limiter", "acme").plugin == "acme_limits"


def test_entry_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_plugin(tmp_path, "ep_limits.py", limiter_plugin("Ep", "from_ep"))
    dist = tmp_path / "ep_limits-1.2.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-limits\nVersion: 1.2\n")
    (dist / "entry_points.txt").write_text("[taskhub]\nep = ep_limits\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = load_plugins(None, ())
    assert registry.registration("limiter", "from_ep").plugin == "ep (ep-limits 1.2)"
    assert {i.name: i.source for i in registry.plugins}["ep (ep-limits 1.2)"] == "entry point"


def test_duplicate_name_names_both_plugins(tmp_path: Path) -> None:
    write_plugin(tmp_path, "mine.py", limiter_plugin("Mine", "token_bucket"))
    with pytest.raises(PluginError) as caught:
        load_plugins(tmp_path, (), entry_points=False)
    assert str(caught.value) == (
        "Limiter 'token_bucket' is registered by both 'taskhub.builtin.limiters.token_bucket' and "
        "'plugins/mine.py': rename one of them, or remove one plugin"
    ).replace("plugins/mine.py", _shown(tmp_path / "mine.py"))


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def test_unknown_name_lists_the_choices() -> None:
    registry = load_plugins(None, (), entry_points=False)
    with pytest.raises(UnknownComponentError) as caught:
        registry.get("limiter", "leaky")
    assert str(caught.value) == (
        "Unknown limiter 'leaky'. Choose one of: "
        "concurrency, fixed_window, gcra, sliding_window, token_bucket"
    )


def test_import_failure_names_the_plugin_file_and_line(tmp_path: Path) -> None:
    path = write_plugin(tmp_path, "broken.py", "import os\n\nvalue = undefined_name + 1\n")
    with pytest.raises(PluginError) as caught:
        load_plugins(tmp_path, (), entry_points=False)
    message = str(caught.value)
    assert message.startswith(f"Plugin '{_shown(path)}' failed to import: NameError:")
    assert f"({path}, line 3)" in message


def test_missing_dependency_names_the_plugin(tmp_path: Path) -> None:
    write_plugin(tmp_path, "needs.py", "import not_installed_anywhere\n")
    with pytest.raises(PluginError, match="ModuleNotFoundError: No module named"):
        load_plugins(tmp_path, (), entry_points=False)


def test_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = write_plugin(tmp_path, "typo.py", "def f(:\n    pass\n")
    with pytest.raises(PluginError, match=rf"SyntaxError: .*\({path}, line 1\)"):
        load_plugins(tmp_path, (), entry_points=False)


def test_dotted_path_that_does_not_exist() -> None:
    with pytest.raises(PluginError, match=r"Plugin 'no\.such\.module' failed to import"):
        load_plugins(None, ["no.such.module"], entry_points=False)


def test_registering_something_that_is_not_a_component(tmp_path: Path) -> None:
    write_plugin(
        tmp_path,
        "wrong.py",
        """
        from taskhub import hookimpl

        class NotALimiter:
            name = "nope"

        @hookimpl
        def register_limiters(register):
            register(NotALimiter)
        """,
    )
    with pytest.raises(PluginError, match=r"is not a subclass of taskhub\.Limiter"):
        load_plugins(tmp_path, (), entry_points=False)


def test_bad_component_name(tmp_path: Path) -> None:
    write_plugin(tmp_path, "caps.py", limiter_plugin("Caps", "Bad-Name"))
    with pytest.raises(PluginError, match="a component name must be lower-case letters"):
        load_plugins(tmp_path, (), entry_points=False)


def test_misspelled_hook_is_reported_with_the_known_hooks(tmp_path: Path) -> None:
    write_plugin(
        tmp_path,
        "typo_hook.py",
        """
        from taskhub import hookimpl

        @hookimpl
        def register_limiter(register):
            pass
        """,
    )
    with pytest.raises(PluginError) as caught:
        load_plugins(tmp_path, (), entry_points=False)
    message = str(caught.value)
    assert "implements a hook taskhub does not define" in message
    assert "register_limiters" in message


def test_handler_options_may_not_shadow_job_options(tmp_path: Path) -> None:
    write_plugin(
        tmp_path,
        "shadow.py",
        """
        from taskhub import Options, TaskHandler, hookimpl

        class Shadow(TaskHandler):
            name = "shadow"
            class Config(Options):
                retries: int = 1

        @hookimpl
        def register_handlers(register):
            register(Shadow)
        """,
    )
    with pytest.raises(PluginError, match="declares option\\(s\\) retries"):
        load_plugins(tmp_path, (), entry_points=False)


def test_exception_inside_a_register_hook(tmp_path: Path) -> None:
    write_plugin(
        tmp_path,
        "explodes.py",
        """
        from taskhub import hookimpl

        @hookimpl
        def register_sinks(register):
            raise RuntimeError("boom")
        """,
    )
    with pytest.raises(PluginError, match="failed in register_sinks: RuntimeError: boom"):
        load_plugins(tmp_path, (), entry_points=False)


def test_cli_plugin_errors_exit_2_without_traceback(tmp_path: Path) -> None:
    write_plugin(tmp_path / "plugins", "broken.py", "raise ImportError('half installed')\n")
    (tmp_path / "config.yaml").write_text("plugins_dir: plugins\n")
    result = run_cli(["check", "config.yaml"], tmp_path)
    assert result.returncode == 2
    assert "Plugin 'plugins/broken.py' failed to import: ImportError: half installed" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr


def test_cli_lists_plugins_and_their_components(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(f"plugins_dir: {ROOT / 'plugins'}\n")
    result = run_cli(["plugins", "config.yaml"], tmp_path)
    assert result.returncode == 0, result.stderr
    expected = "taskhub.builtin.limiters.token_bucket (built-in)\n  limiter: token_bucket"
    assert expected in result.stdout
    assert "(plugins_dir)\n  limiter: daily_quota" in result.stdout


def hook_sections() -> dict[str, str]:
    """The hook reference's sections, by heading: ``register_limiters(register)`` -> text."""
    page = (ROOT / "docs" / "plugins" / "hooks.md").read_text()
    parts = re.split(r"^### `([^`]+)`$", page, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_every_hook_is_documented_in_the_hook_reference() -> None:
    hooks = {
        name: getattr(hookspecs, name)
        for name in dir(hookspecs)
        if hasattr(getattr(hookspecs, name), f"{hookspecs.PROJECT}_spec")
    }
    assert len(hooks) == 9
    assert {kind.hook.__name__ for kind in hookspecs.KINDS.values()} <= hooks.keys()
    sections = hook_sections()
    for name, spec in hooks.items():
        # The heading is the hook's real signature, and the section quotes its docstring.
        heading = f"{name}({', '.join(inspect.signature(spec).parameters)})"
        assert heading in sections, f"docs/plugins/hooks.md has no section `{heading}`"
        summary = (spec.__doc__ or "").replace("``", "`").strip()
        assert summary and summary in sections[heading], f"{heading}: not its docstring"
        assert f"def {name}(" in sections[heading], f"{heading}: no example"
    extra = sections.keys() - {
        f"{n}({', '.join(inspect.signature(s).parameters)})" for n, s in hooks.items()
    }
    assert not extra, f"sections for hooks that do not exist: {extra}"


def test_a_plugin_file_is_imported_once_per_process(tmp_path: Path) -> None:
    """The CLI loads ./plugins for its commands, then the config loads them again."""
    imports = tmp_path / "imports.log"
    write_plugin(
        tmp_path / "plugins",
        "counted.py",
        f"""
        with open({str(imports)!r}, "a") as log:
            log.write("imported\\n")
        """,
    )
    first = load_plugins(tmp_path / "plugins", (), entry_points=False)
    second = load_plugins(tmp_path / "plugins", (), entry_points=False)
    assert imports.read_text() == "imported\n"
    assert first.manager.get_plugin(first.plugins[-1].name) is second.manager.get_plugin(
        second.plugins[-1].name
    )
