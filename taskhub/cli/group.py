"""A ``taskhub GROUP ACTION CONFIG ...`` command group, as ``jobs`` and ``limits`` are.

Each action opens what it works on from the config (the queue, the limiter's
Redis), runs, and closes it again. Redis being unreachable is a one-line error
and exit code 1, like any component that cannot start.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Generic, TypeVar

from taskhub.errors import BackendUnavailable, StartupError, UsageError
from taskhub.store.urls import is_embedded

T = TypeVar("T")
Action = Callable[[T, argparse.Namespace], Coroutine[Any, Any, int]]


class CommandGroup(Generic[T]):
    """``taskhub NAME`` and its actions; ``opener(config_path)`` gives what they act on."""

    def __init__(
        self,
        commands: Any,
        common: argparse.ArgumentParser,
        name: str,
        help_text: str,
        opener: Callable[[str], AbstractAsyncContextManager[T]],
    ) -> None:
        self.common = common
        self.opener = opener
        group = commands.add_parser(name, help=help_text, parents=[common])
        self.actions = group.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(self, name: str, help_text: str, run: Action[T]) -> argparse.ArgumentParser:
        """Add an action taking CONFIG; add its own arguments to the parser returned."""
        sub = self.actions.add_parser(
            name, help=help_text, description=help_text, parents=[self.common]
        )
        sub.add_argument("config", metavar="CONFIG", help="YAML config file")
        sub.set_defaults(handler=lambda args: asyncio.run(opened_run(self.opener, args, run)))
        return sub


async def opened_run(
    opener: Callable[[str], AbstractAsyncContextManager[T]],
    args: argparse.Namespace,
    run: Action[T],
) -> int:
    """Run one action on what ``opener`` opens from ``args.config``, closing it after.

    Also for a lone command (``taskhub status``), so that it fails as the groups do.
    """
    async with opener(args.config) as opened:
        try:
            return await run(opened, args)
        except BackendUnavailable as exc:
            raise StartupError(f"Redis is unreachable: {exc.__cause__ or exc}") from exc


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


def number_in(
    kind: Callable[[str], N], low: N, high: N, *, noun: str, out_of_range: str
) -> Callable[[str], N]:
    """An argparse ``type`` for a number within ``[low, high]``, with messages that say
    what was wrong: "'x' is not <noun>", or ``out_of_range`` formatted with ``value``."""

    def parse(text: str) -> N:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(out_of_range.format(value=value))
        return value

    return parse
