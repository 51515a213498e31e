"""Plugins add ``taskhub`` commands through ``register_commands``, as datasette's and llm's do."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from taskhub.cli.main import main
from tests.support.processes import run_cli

HELLO = """
import click
from taskhub import hookimpl

@hookimpl
def register_commands(cli):
    @cli.command(help="greet someone")
    @click.argument("name")
    def hello(name):
        click.echo(f"hello {name}")
"""

FAILING = """
import click
from taskhub import StartupError, UsageError, hookimpl

ERRORS = {
    "bug": KeyError("no-such-key"),
    "usage": UsageError("--size must be even"),
    "startup": StartupError("the printer is on fire"),
}

@hookimpl
def register_commands(cli):
    @cli.group()
    def tools():
        "a plugin's own group"

    @tools.command()
    @click.argument("kind")
    def explode(kind):
        raise ERRORS[kind]
"""


def command(name: str, plugin: str = "") -> str:
    """A plugin adding one command ``name`` that does nothing."""
    return textwrap.dedent(
        f"""
        from taskhub import hookimpl

        @hookimpl
        def register_commands(cli):
            @cli.command({name!r})
            def {plugin or name}():
                pass
        """
    )


@pytest.fixture
def plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``./plugins`` in a fresh working directory, where the command line looks for it."""
    monkeypatch.chdir(tmp_path)
    directory = tmp_path / "plugins"
    directory.mkdir()
    return directory


def test_a_plugin_command_runs_prints_and_is_listed_in_the_help(plugins: Path) -> None:
    (plugins / "hello.py").write_text(HELLO)
    result = run_cli(["hello", "world"], plugins.parent)
    assert (result.returncode, result.stdout, result.stderr) == (0, "hello world\n", "")
    listed = run_cli(["--help"], plugins.parent)
    assert listed.returncode == 0
    assert "  hello    greet someone\n" in listed.stdout
    assert "  run      run the HTTP server" in listed.stdout
    usage = run_cli(["hello", "--help"], plugins.parent).stdout
    assert "Usage: taskhub hello [OPTIONS] NAME" in usage and "--debug" in usage


def test_taskhub_plugins_lists_the_commands_each_plugin_adds(
    plugins: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (plugins / "hello.py").write_text(HELLO)
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "plugins/hello.py (plugins_dir)\n  (registers no components)\n  commands: hello\n" in out
    assert "taskhub.builtin.limiters.token_bucket (built-in)\n  limiter: token_bucket\n" in out


def test_a_config_s_own_plugin_is_listed_with_why_it_adds_no_command(
    plugins: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = plugins.parent / "lib"
    elsewhere.mkdir()
    (elsewhere / "greeter.py").write_text(HELLO)
    monkeypatch.syspath_prepend(str(elsewhere))
    (plugins.parent / "c.yaml").write_text("plugins: [greeter]\n")
    assert main(["plugins", "c.yaml"]) == 0
    out = capsys.readouterr().out
    assert "greeter (config)\n  (registers no components)\n  commands: not added (only " in out
    with pytest.raises(SystemExit):
        main(["hello", "world"])
    assert "No such command 'hello'" in capsys.readouterr().err


def test_a_plugin_command_may_not_take_a_built_in_name(
    plugins: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (plugins / "mine.py").write_text(command("run", plugin="my_run"))
    assert main(["--help"]) == 2
    assert capsys.readouterr().err == (
        "taskhub: error: Plugin 'plugins/mine.py' adds a command 'run', the name of a "
        "built-in taskhub command: rename the plugin's command\n"
    )


def test_two_plugins_may_not_add_one_command(
    plugins: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (plugins / "first.py").write_text(command("sync"))
    (plugins / "second.py").write_text(command("sync"))
    assert main(["check", "c.yaml"]) == 2
    assert capsys.readouterr().err == (
        "taskhub: error: Command 'sync' is registered by both 'plugins/first.py' and "
        "'plugins/second.py': rename one of them, or remove one plugin\n"
    )


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["check", "c.yaml"]])
def test_a_plugin_that_fails_to_import_is_named_by_every_command(
    plugins: Path, argv: list[str]
) -> None:
    (plugins / "broken.py").write_text("import not_installed_anywhere\n")
    result = run_cli(argv, plugins.parent)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (
        "taskhub: error: Plugin 'plugins/broken.py' failed to import: ModuleNotFoundError: "
        f"No module named 'not_installed_anywhere' ({plugins / 'broken.py'}, line 1)\n"
    )


def test_a_failing_register_commands_hook_names_the_plugin(
    plugins: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (plugins / "bad.py").write_text(
        "from taskhub import hookimpl\n\n"
        "@hookimpl\ndef register_commands(cli):\n    raise ValueError('no commands today')\n"
    )
    assert main(["--help"]) == 2
    assert capsys.readouterr().err == (
        "taskhub: error: Plugin 'plugins/bad.py' failed in register_commands: "
        "ValueError: no commands today\n"
    )


@pytest.mark.parametrize(
    ("kind", "code", "line"),
    [
        (
            "bug",
            1,
            "taskhub: error: `taskhub tools explode` failed: KeyError: 'no-such-key' "
            "({plugin}, line 20) (--debug shows the traceback)",
        ),
        ("usage", 2, "taskhub: error: --size must be even"),
        ("startup", 1, "taskhub: error: the printer is on fire"),
    ],
)
def test_an_exception_inside_a_plugin_command_is_one_line_and_its_exit_code(
    plugins: Path, kind: str, code: int, line: str
) -> None:
    (plugins / "failing.py").write_text(FAILING)
    result = run_cli(["tools", "explode", kind], plugins.parent)
    assert result.returncode == code
    assert result.stderr == line.format(plugin=plugins / "failing.py") + "\n"
    debug = run_cli(["tools", "explode", kind, "--debug"], plugins.parent)
    assert debug.returncode == code
    assert debug.stderr.startswith("Traceback (most recent call last):")
    assert debug.stderr.splitlines()[-1] == line.format(plugin=plugins / "failing.py").removesuffix(
        " (--debug shows the traceback)"
    )


def test_a_plugin_file_runs_once_though_the_cli_and_the_config_both_load_it(
    plugins: Path,
) -> None:
    imports = plugins.parent / "imports.log"
    (plugins / "counted.py").write_text(
        f"with open({str(imports)!r}, 'a') as log:\n    log.write('imported\\n')\n"
    )
    (plugins.parent / "c.yaml").write_text("plugins_dir: plugins\n")  # the default, spelled out
    result = run_cli(["check", "c.yaml"], plugins.parent)
    assert result.returncode == 0, result.stderr
    assert imports.read_text() == "imported\n"
