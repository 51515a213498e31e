"""The hooks a taskhub plugin may implement.

Registration hooks run once at start-up and hand component classes to
``register``. Lifecycle hooks may return an awaitable; the kernel awaits it.
Nothing on the request or job path goes through a hook call.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from taskhub.components import (
        Authenticator,
        Limiter,
        QueueBackend,
        Server,
        Sink,
        TaskHandler,
    )
    from taskhub.hub.kernel import Hub

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
def startup(hub: Hub) -> Awaitable[None] | None:
    """Called once the hub's components are running, in every process role."""


@hookspec
def shutdown(hub: Hub) -> Awaitable[None] | None:
    """Called when the hub stops, before its components close."""
