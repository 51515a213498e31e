"""The hooks a taskhub plugin may implement, and the component kinds they register.

Registration hooks run once at start-up and hand component classes to
``register``. Lifecycle hooks may return an awaitable; the kernel awaits it.
Nothing on the request or job path goes through a hook call.

``register_commands`` runs as the command line starts, before it is parsed and so
before any config is read: only the built-ins, installed entry points and the
``./plugins`` folder can add commands, not a config's own ``plugins_dir`` or
``plugins`` list.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pluggy

from taskhub.components import (
    Authenticator,
    Component,
    Limiter,
    QueueBackend,
    Server,
    Sink,
    TaskHandler,
)

if TYPE_CHECKING:
    import click

    from taskhub.context import PluginContext

PROJECT = "taskhub"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_limiters(register: Callable[[type[Limiter]], None]) -> None:
    """Register rate-limiting strategies (``limiter: {type: ...}``)."""


@hookspec
def register_handlers(register: Callable[[type[TaskHandler]], None]) -> None:
    """Register task handlers (``tasks: {name: {type: ...}}``)."""


@hookspec
def register_sinks(register: Callable[[type[Sink]], None]) -> None:
    """Register completion sinks (``sinks: [{type: ...}]``)."""


@hookspec
def register_servers(register: Callable[[type[Server]], None]) -> None:
    """Register HTTP servers (``server: {type: ...}``)."""


@hookspec
def register_queues(register: Callable[[type[QueueBackend]], None]) -> None:
    """Register queue backends with their workers (``queue: {type: ...}``)."""


@hookspec
def register_authenticators(register: Callable[[type[Authenticator]], None]) -> None:
    """Register authenticators for the task endpoints (``auth: {type: ...}``)."""


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add ``taskhub`` subcommands with ``@cli.command()``; a config's own plugins cannot."""


@hookspec
def startup(hub: PluginContext) -> Awaitable[None] | None:
    """Called once the components are running, in every process role."""


@hookspec
def shutdown(hub: PluginContext) -> Awaitable[None] | None:
    """Called when the process stops, before its components close."""


@dataclass(frozen=True)
class Kind:
    """A kind of component: the base class its plugins subclass, the hook that registers
    them, the config key that picks one, and the one picked when config names none."""

    base: type[Component]
    hook: Callable[..., Any]
    config_key: str
    default: str | None = None

    @property
    def name(self) -> str:
        return self.base.kind


# Every kind, once. Tasks pick their handler by ``type``, default the task's own name;
# sinks are a list, each entry naming its type.
KINDS: dict[str, Kind] = {
    kind.name: kind
    for kind in (
        Kind(Limiter, register_limiters, "limiter", "token_bucket"),
        Kind(TaskHandler, register_handlers, "tasks"),
        Kind(Sink, register_sinks, "sinks"),
        Kind(QueueBackend, register_queues, "queue", "saq"),
        Kind(Server, register_servers, "server", "sanic"),
        Kind(Authenticator, register_authenticators, "auth", "none"),
    )
}
