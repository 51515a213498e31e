"""What every ``taskhub`` command shares: the click :class:`Group` that gives each of
them ``--debug`` (a plugin's too), the CONFIG argument, range-checked numbers, and
the ``taskhub GROUP ACTION CONFIG`` groups (``jobs``, ``limits``).

Each action opens what it works on from the config (the queue, the limiter's
Redis), runs, and closes it again. Redis being unreachable is a one-line error
and exit code 1, like any component that cannot start.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Generic, TypeVar

import click

from taskhub.errors import BackendUnavailable, StartupError, UsageError
from taskhub.monitoring import log_format
from taskhub.store.clients import why_unavailable
from taskhub.store.urls import is_embedded

T = TypeVar("T")
Opener = Callable[[str], AbstractAsyncContextManager[T]]

# Keys of the context's meta, which every context of one command line shares: where
# main() finds, when a command fails, whether it had --debug and which command it was.
DEBUG = "taskhub.debug"
COMMAND = "taskhub.command"
# Libraries that log every job or request at INFO; quiet unless --debug.
CHATTY_LOGGERS = ("saq", "sanic.root", "sanic.access", "sanic.server")

config_argument = click.argument("config", metavar="CONFIG", help="YAML config file")


def configure_logging(
    level: str,
    debug: bool,
    kind: log_format.LogFormat = "text",
    secrets: Iterable[str] = (),
) -> None:
    log_format.install(kind, secrets)
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if debug else level)
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if debug else logging.WARNING)


def debugging() -> bool:
    """Whether this command line has ``--debug`` (for a command that passes it on)."""
    return bool(click.get_current_context().meta.get(DEBUG))


def _note(ctx: click.Context, param: click.Parameter, debug: bool) -> None:
    ctx.meta[COMMAND] = ctx.command_path
    ctx.meta[DEBUG] = ctx.meta.get(DEBUG) or debug
    if debug:
        configure_logging("INFO", debug=True)


def _take_debug(command: click.Command) -> None:
    if not any("--debug" in param.opts for param in command.params):
        command.params.append(
            click.Option(
                ["--debug"],
                is_flag=True,
                expose_value=False,
                callback=_note,
                help="DEBUG logs and full tracebacks",
            )
        )
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _take_debug(sub)


class Group(click.Group):
    """A group whose every command takes ``--debug``, however it was added (a plugin's
    too), and whose "no such command" error lists the commands there are."""

    group_class = type  # ``@group.group()`` makes a Group too

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        _take_debug(cmd)
        super().add_command(cmd, name)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        try:
            return super().resolve_command(ctx, args)
        except click.exceptions.NoSuchCommand as exc:
            known = f"The commands are: {', '.join(self.list_commands(ctx))}."
            raise click.exceptions.NoSuchCommand(
                exc.command_name, f"{exc.message} {known}", self.commands, ctx
            ) from None


class ActionGroup(Group, Generic[T]):
    """``taskhub NAME ACTION CONFIG ...``; ``opener(CONFIG)`` gives what actions act on."""

    def __init__(self, name: str, help: str, opener: Opener[T]) -> None:
        super().__init__(name, help=help)
        self.opener = opener

    def action(self, help: str) -> Callable[[Callable[..., Awaitable[int]]], click.Command]:
        """Make ``async run(opened, **options)`` an action taking CONFIG (and its options)."""

        def decorate(run: Callable[..., Awaitable[int]]) -> click.Command:
            @functools.wraps(run)
            def command(config: str, **options: Any) -> int:
                return self.act(config, functools.partial(run, **options))

            return self.command(help=help)(config_argument(command))

        return decorate

    def act(self, config: str, run: Callable[[T], Awaitable[int]]) -> int:
        return asyncio.run(opened_run(self.opener, config, run))


async def opened_run(opener: Opener[T], config: str, run: Callable[[T], Awaitable[int]]) -> int:
    """Run one action on what ``opener`` opens from ``config``, closing it after.

    Also for a lone command (``taskhub status``), so that it fails as the groups do.
    """
    async with opener(config) as opened:
        try:
            return await run(opened)
        except BackendUnavailable as exc:
            cause = exc.__cause__
            raise StartupError(why_unavailable(cause) if cause else str(exc)) from exc


def refuse_embedded(path: str, setting: str, url: str, what: str) -> None:
    """A memory:// Redis lives inside one ``taskhub run``: no other process can reach it."""
    if is_embedded(url):
        raise UsageError(
            f"{path}: {setting} is memory://, whose {what} live only inside a running "
            f"`taskhub run`: point {setting} at the Redis server the workers use"
        )


def columns(rows: Sequence[Sequence[str]]) -> list[str]:
    """Rows as aligned text columns; the last column is not padded (it may be long)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return [
        "  ".join(
            [*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[-1]]
        ).rstrip()
        for row in rows
    ]


N = TypeVar("N", int, float)


class NumberIn(click.ParamType[N]):
    """A number within ``[low, high]``, with messages that say what was wrong:
    "'x' is not <noun>", or ``out_of_range`` formatted with ``value``."""

    def __init__(self, kind: type[N], low: N, high: N, *, noun: str, out_of_range: str) -> None:
        self.kind: type[N] = kind
        self.low: N = low
        self.high: N = high
        self.name = noun
        self.out_of_range = out_of_range

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> N:
        try:
            number = self.kind(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not {self.name}", param, ctx)
        if not self.low <= number <= self.high:
            self.fail(self.out_of_range.format(value=number), param, ctx)
        return number
