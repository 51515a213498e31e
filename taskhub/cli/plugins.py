"""``taskhub plugins [CONFIG]``, and the commands plugins add (``register_commands``).

Plugins add commands as datasette's and llm's do: the hook gets the ``taskhub``
group and calls ``@cli.command()``. Which plugin added which command is kept, for
``taskhub plugins`` and for an error that names both sides of a clash.
"""

from __future__ import annotations

import sys

import click
import pluggy

from taskhub.errors import PluginError
from taskhub.hub.kernel import Hub
from taskhub.hub.plugins import PluginInfo, call_impl, default_plugins_dir, load_plugins

# Why a plugin a config names has no commands, when it has some.
CONFIG_ONLY = "not added (only entry points and ./plugins add commands)"


def add_plugin_commands(
    cli: click.Group, manager: pluggy.PluginManager, plugins: list[PluginInfo]
) -> None:
    """Call every plugin's ``register_commands`` on ``cli`` and note what each added in its
    :class:`PluginInfo`; a name already taken (built-in or another plugin's) is an error."""
    owners: dict[str, str | None] = dict.fromkeys(cli.commands)  # None: built in
    infos = {info.name: info for info in plugins}
    for impl in manager.hook.register_commands.get_hookimpls():
        plugin = impl.plugin_name
        before = dict(cli.commands)
        call_impl("register_commands", impl, cli=cli)
        for name, command in cli.commands.items():
            if before.get(name) is command:
                continue
            if name in before:
                raise PluginError(clash(name, owners[name], plugin))
            owners[name] = plugin
            infos[plugin].commands.append(name)


def clash(name: str, first: str | None, second: str) -> str:
    if first is None:
        return (
            f"Plugin {second!r} adds a command {name!r}, the name of a built-in taskhub "
            "command: rename the plugin's command"
        )
    return (
        f"Command {name!r} is registered by both {first!r} and {second!r}: "
        "rename one of them, or remove one plugin"
    )


def plugins_command(manager: pluggy.PluginManager, plugins: list[PluginInfo]) -> click.Command:
    """``taskhub plugins``, listing ``plugins`` (those the command line loaded) or a config's."""

    @click.command("plugins", help="list plugins and the components and commands each registers")
    @click.argument(
        "config", metavar="CONFIG", required=False, help="also load this config's plugins"
    )
    def list_plugins(config: str | None) -> int:
        registry = Hub.from_file(config).registry if config else load_plugins(default_plugins_dir())
        commands = {info.name: info.commands for info in plugins}
        for info in registry.plugins:
            sys.stdout.write(f"{info.name} ({info.source})\n")
            if not info.components:
                sys.stdout.write("  (registers no components)\n")
            for kind, names in info.components.items():
                sys.stdout.write(f"  {kind}: {', '.join(names)}\n")
            if commands.get(info.name):
                sys.stdout.write(f"  commands: {', '.join(commands[info.name])}\n")
            elif info.name not in commands and adds_commands(registry.manager, info.name):
                sys.stdout.write(f"  commands: {CONFIG_ONLY}\n")
        return 0

    return list_plugins


def adds_commands(manager: pluggy.PluginManager, plugin: str) -> bool:
    hook = manager.hook.register_commands
    return any(impl.plugin_name == plugin for impl in hook.get_hookimpls())
