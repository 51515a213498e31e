"""What a plugin may read from the kernel: the :class:`PluginContext`.

The kernel hands one context to each component that needs the running process
(``QueueBackend.open`` and ``work``, ``Server.start``) and to the ``startup``
and ``shutdown`` hooks. It is the whole of what a plugin may read; anything
else of the kernel is private and may change.

Some of it exists only in one process role. ``taskhub run`` is both roles;
``taskhub serve`` is the server role alone, ``taskhub worker`` the worker role.
Reading what the role lacks raises :class:`RoleError`, which names the role
that has it, instead of handing back a ``None`` to trip over later.

When, in the order the kernel starts things:

1. every component is built from its config (``__init__``): no context yet;
2. ``queue.open(context)``: ``settings``, ``tasks``, ``redis`` and
   ``connect_redis`` are ready, in every role;
3. worker role: the sinks open, then ``runner`` and ``job_counters`` are ready;
4. server role: the admission path is built, ``http`` is ready, then
   ``server.start(context)``;
5. the ``startup`` hook, then (worker role) ``queue.work(context, stop)``.

Stopping runs the same steps backwards, the ``shutdown`` hook first.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from taskhub.config.models import Settings
    from taskhub.http import HttpRequest, HttpResponse
    from taskhub.jobs import TaskSpec


class Role(enum.Flag):
    """What a process runs: the HTTP server, the worker, or both (``taskhub run``)."""

    SERVER = enum.auto()
    WORKER = enum.auto()
    BOTH = SERVER | WORKER


class RoleError(RuntimeError):
    """A plugin read a part of the context its process role does not have."""


class HttpHandler(Protocol):
    """taskhub's HTTP API: every route, status code, body and header (server role)."""

    async def handle(self, request: HttpRequest) -> HttpResponse:
        """The response to ``request``; never raises (an error is a 500 with an id)."""
        ...

    def error(self, status: int, request: HttpRequest | None = None) -> HttpResponse:
        """The response to a request the server refused before it reached the API:
        413 (body over the limit), 408 (too slow), 400 (not HTTP), 499 (client gone)."""
        ...


class ScriptCall(Protocol):
    """One Lua script on a :class:`ScriptConnection`, called with its keys and arguments."""

    async def __call__(self, keys: Sequence[Any], args: Sequence[Any]) -> Any: ...


class ScriptConnection(Protocol):
    """A pipelined connection for Lua scripts: the calls of one event-loop turn leave in
    one write, each encoded in C, with no connection-pool checkout per call. Connection
    errors are redis-py's (``ConnectionError``, ``TimeoutError``); a call that fails
    may or may not have run, as any request whose reply was lost."""

    def script(self, source: str) -> ScriptCall:
        """The script, loaded on every connection this makes (``EVALSHA`` after)."""
        ...

    async def close(self) -> None: ...


class JobRunner(Protocol):
    """Runs jobs on a worker: the task's handler, then every sink (worker role)."""

    @property
    def limited(self) -> bool:
        """Whether execution limits apply; if not, :meth:`wait_ms` is always 0 (skip it)."""
        ...

    async def wait_ms(self, spec: TaskSpec, *, job_id: str, user_id: str) -> int:
        """How long the job must wait for its execution limits; 0 to run it now.

        Call it before starting an attempt; when it is not 0, schedule the job for
        then without using an attempt.
        """
        ...

    async def run(
        self,
        spec: TaskSpec,
        *,
        job_id: str,
        user_id: str,
        payload: Any,
        attempt: int,
        enqueued_ms: int,
    ) -> Any:
        """Validate the payload, run the handler, hand the completion to every sink,
        and return the handler's result (a pydantic model as its JSON form)."""
        ...

    async def failed(
        self,
        name: str,
        *,
        job_id: str,
        user_id: str,
        payload: Any,
        attempt: int,
        enqueued_ms: int,
        error: str,
    ) -> None:
        """Hand a job's final failure (it just became a dead letter) to every sink;
        never raises."""
        ...


class JobCounters(Protocol):
    """The worker's job metrics (worker role, when ``metrics.enabled``)."""

    def count(self, task: str, outcome: str) -> None:
        """One job outcome: completed, failed, retried, dead, swept, aborted, handed_back."""
        ...

    def ran(self, task: str, seconds: float) -> None:
        """How long one attempt ran (handler and sinks)."""
        ...


class PluginContext(Protocol):
    """The running process, as far as plugins may see it."""

    @property
    def role(self) -> Role:
        """What this process runs."""
        ...

    @property
    def settings(self) -> Settings:
        """The validated config (read it, never change it). A component's own section
        is its ``self.config``; this is for the rest (``redis.key_prefix``, ...)."""
        ...

    @property
    def tasks(self) -> Mapping[str, TaskSpec]:
        """Every task clients may submit, by name."""
        ...

    @property
    def default_task(self) -> str:
        """The task of a submission that names none."""
        ...

    @property
    def redis(self) -> Redis:
        """The process's shared client on ``redis.url`` (a cluster client on a cluster).
        The kernel closes it; do not block on it (use :meth:`connect_redis`)."""
        ...

    def connect_redis(self, *, blocking_timeout: float = 0.0) -> Redis:
        """A new client of your own on ``redis.url``, for blocking commands: its socket
        timeout allows ``blocking_timeout`` more seconds. You close it."""
        ...

    def connect_scripts(self) -> ScriptConnection | None:
        """A new pipelined connection of your own on ``redis.url`` for Lua scripts on the
        hot path (routed by key on a cluster); None on the embedded store, where
        redis-py's ``register_script`` serves. You close it."""
        ...

    @property
    def http(self) -> HttpHandler:
        """The HTTP API to serve (server role)."""
        ...

    @property
    def runner(self) -> JobRunner:
        """What runs each job (worker role)."""
        ...

    @property
    def job_counters(self) -> JobCounters | None:
        """The job metrics to count into (worker role); None when metrics are off."""
        ...
