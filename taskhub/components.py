"""The component base classes every plugin builds on.

A component is a class with a ``name`` (what config selects it by), a pydantic
``Config`` model (its options, validated with their YAML path) and the async
methods its kind needs. Plugins hand component classes to the ``register_*``
hooks; the kernel instantiates the ones the config names.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from taskhub.errors import StartupError, UsageError
from taskhub.http import ApiOptions, Headers
from taskhub.jobs import Completion, Failure, Task, TaskSpec
from taskhub.store.sharding import UNSHARDED, Shards

if TYPE_CHECKING:
    from taskhub.context import PluginContext
    from taskhub.jobs import AbortResult, JobInfo, QueueSnapshot

__all__ = [
    "Authenticator",
    "Completion",
    "Component",
    "Failure",
    "HttpServerOptions",
    "Limiter",
    "Options",
    "PreparedJob",
    "Principal",
    "QueueBackend",
    "RatePolicy",
    "Server",
    "Sink",
    "Task",
    "TaskHandler",
    "TaskSpec",
    "Unauthenticated",
    "bind_tcp",
    "http_url",
]


class Options(BaseModel):
    """Base for component ``Config`` models: unknown keys are errors, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Component:
    """Something config can select by ``type: <name>``."""

    kind: ClassVar[str] = "component"
    name: ClassVar[str] = ""
    Config: ClassVar[type[Options]] = Options

    def __init__(self, config: Options) -> None:
        self.config = config

    def __repr__(self) -> str:
        return f"<{self.kind} {self.name!r}>"


# --------------------------------------------------------------------------- limiters


@dataclass(frozen=True, slots=True)
class RatePolicy:
    """What a limiter promises, for the ``RateLimit-Policy`` header: ``limit`` per ``window`` s."""

    limit: int
    window: float


class Limiter(Component):
    """A rate-limiting strategy, expressed as Lua so admission stays one atomic round trip.

    ``lua`` is a chunk that returns a table ``M`` with three functions. ``ks`` is the
    list of this rule's Redis keys, ``now`` the Redis clock in milliseconds, ``cost``
    what the request weighs and ``p`` the list from :meth:`params`:

    - ``M.check(ks, now, cost, p) -> d`` reads state and decides, writing nothing.
      ``d.allowed`` (boolean), ``d.limit``, ``d.remaining`` (after this request, if
      admitted), ``d.reset`` (ms until the quota is whole again) and ``d.retry``
      (ms until a refused request could pass; 0 when allowed).
    - ``M.commit(ks, now, cost, p, d, job)`` charges the request. It runs only when
      every rule admitted and the job was queued; ``job`` is the job id.
    - ``M.refuse(ks, now, cost, p, d)`` records what a refusal costs under this
      strategy (a block, a counted attempt) and may raise ``d.retry``. It runs only
      for the rule that refused.

    Set expiries with ``PEXPIREAT`` on ``now`` (not ``PEXPIRE``), so that a key's
    lifetime follows the same clock as the decision that set it.
    """

    kind = "limiter"
    lua: ClassVar[str] = ""
    key_count: ClassVar[int] = 1
    # A refusal with retry R means "refused for R ms whatever happens meanwhile", so a
    # server may answer that key from memory until then. False for strategies whose
    # refusals can end early (a concurrency slot frees when a job finishes).
    deny_cacheable: ClassVar[bool] = True
    # Whether the strategy also makes sense on workers (execution limits).
    executable: ClassVar[bool] = True
    # True when ``commit`` adds the job id to a sorted set (``keys()[0]``) that the
    # queue must remove it from when the job finishes: a slot held while it runs.
    holds_slot: ClassVar[bool] = False

    def params(self) -> list[float]:
        """Constants the Lua functions receive as ``p``."""
        return []

    def policy(self) -> RatePolicy:
        """What the strategy allows, for the ``RateLimit-Policy`` header and cost checks."""
        raise NotImplementedError

    def keys(self, prefix: str, subject: str) -> list[str]:
        """The Redis keys holding ``subject``'s state (``subject`` is already escaped)."""
        return [f"{prefix}:{self.name}:{subject}"]


# --------------------------------------------------------------------------- tasks


class TaskHandler(Component):
    """Does the work of a task. ``Payload``, when set, validates ``payload`` at admission."""

    kind = "handler"
    Payload: ClassVar[type[BaseModel] | None] = None

    async def run(self, task: Task) -> Any:
        """Do the task; what it returns is the job's result (JSON, or a pydantic model).

        Raise to fail the attempt (it is retried while attempts remain), or
        :class:`taskhub.RetryLater` to run it again after a delay.
        """
        raise NotImplementedError


class Sink(Component):
    """Receives every completion. ``emit`` must not block the event loop."""

    kind = "sink"

    async def open(self) -> None:
        """Acquire resources (files, connections) before the first completion."""

    async def emit(self, completion: Completion) -> None:
        """Record one completion; before the job is marked complete, so at least once."""
        raise NotImplementedError

    async def failed(self, failure: Failure) -> None:
        """Record a job's final failure, once it is a dead letter. Optional: the default
        ignores it, as the text sinks do (they record completions only)."""

    async def close(self) -> None:
        """Flush and release; called once at shutdown."""


# --------------------------------------------------------------------------- queue and server


@dataclass(frozen=True, slots=True)
class PreparedJob:
    """A job ready for the admission script: its id, its Redis keys and its arguments."""

    job_id: str
    keys: list[str]
    args: list[str | bytes]
    shard: int = 0  # which of the queue's shards (taskhub.store.sharding) it goes to


class QueueBackend(Component):
    """Stores admitted jobs and runs them on workers.

    ``enqueue_lua`` is a chunk returning a table ``Q`` with ``Q.exists(ks, a)`` (is
    this job already stored?), ``Q.depth(ks, a)`` (jobs admitted and not finished,
    for backpressure) and ``Q.push(ks, a)`` (store and queue it), where ``ks``
    and ``a`` are :attr:`PreparedJob.keys` and :attr:`PreparedJob.args`. The kernel
    splices it into the admission script after the limiter's checks.
    """

    kind = "queue"
    enqueue_lua: ClassVar[str] = ""

    @property
    def max_depth(self) -> int:
        """Most jobs admitted and not yet finished, per shard; 0 for no bound (see ``Q.depth``)."""
        return 0

    @property
    def max_delay(self) -> float:
        """Most seconds ahead a job may be delayed (``delay``, ``run_at``); 0: no delays."""
        return 0

    def layout(self, *, cluster: bool = False) -> Shards:
        """The queue's shards, which limiter keys follow into the job's hash slot.

        Called once by the kernel before anything runs. A queue without shards (one
        queue, its keys untagged) need not override it.
        """
        return UNSHARDED

    def prepare(
        self,
        spec: TaskSpec,
        user_id: str,
        payload: Any,
        job_id: str | None = None,
        holds: Sequence[str] = (),
        *,
        priority: int = 0,
        run_at: float | None = None,
    ) -> PreparedJob:
        """Build a job (its id, new unless ``job_id`` is given, keys and stored form).

        ``priority``: higher runs first (see the queue's fairness); ``run_at``: epoch
        seconds before which it must not run (None: at once).

        ``holds`` are sorted sets in which the job id holds a slot (see
        :attr:`Limiter.holds_slot`): the queue removes it from each of them in the
        same step that finishes the job for good. Writes nothing. A payload it cannot
        store raises :class:`taskhub.UnstorablePayload` (the client gets a 422).
        """
        raise NotImplementedError

    async def open(self, context: PluginContext) -> None:
        """Connect; called by servers and workers alike."""

    async def work(self, context: PluginContext, stop: asyncio.Event) -> None:
        """Run jobs until ``stop`` is set, then finish or hand back those in flight."""
        raise NotImplementedError

    # Job inspection, for servers and the CLI. Each raises BackendUnavailable when the
    # store cannot be reached; an unknown or malformed id is "not found", not an error.

    async def status(self, job_id: str) -> JobInfo | None:
        """The job's current state, or None if there is no such job (or it expired)."""
        raise NotImplementedError

    async def wait(self, job_id: str, timeout: float) -> JobInfo | None:
        """The job's state as soon as it settles (complete, failed or aborted), or after
        ``timeout`` seconds (at most 30) whatever it is; None if there is no such job.

        Cancelling the call frees whatever it holds (the client hung up). It must block
        on the store, never poll it. The default answers at once with :meth:`status`:
        a queue plugin without it still serves ``GET /task/{id}?wait=N``, without waiting.
        """
        return await self.status(job_id)

    def end_waits(self) -> None:
        """The process is stopping: make every :meth:`wait` under way, and any that starts
        from now on, answer at once with its job's state. Default: waits end by themselves."""

    async def abort(self, job_id: str) -> AbortResult:
        """Abort a job that is waiting or running; a finished job is left as it is."""
        raise NotImplementedError

    async def check(self) -> None:
        """A cheap read proving the store answers, for ``GET /ready``.

        Raises BackendUnavailable when it cannot. The default looks up a job id that
        never exists, so a queue plugin gets a readiness probe without writing one.
        """
        await self.status("readiness-probe")

    async def dead_letters(self, limit: int | None = None) -> list[JobInfo]:
        """Jobs that used every attempt, oldest failure first."""
        raise NotImplementedError

    async def retry_dead(self, job_ids: list[str] | None) -> list[str]:
        """Queue dead letters again with fresh attempts (``None``: all); returns those moved."""
        raise NotImplementedError

    async def purge_dead(self) -> int:
        """Delete every dead letter; returns how many there were."""
        raise NotImplementedError

    async def weight(self, user_id: str) -> int:
        """Jobs ``user_id`` takes per turn when workers take users in turn (fairness)."""
        raise NotImplementedError

    async def set_weight(self, user_id: str, weight: int | None) -> int:
        """Change it at once (None: back to the config's); returns the weight now in force."""
        raise NotImplementedError

    async def depth(self) -> dict[str, int]:
        """Jobs by state (e.g. ``queued``, ``active``) for the queue-depth gauge; ``{}``
        leaves the gauge out. Raises when the store cannot be reached."""
        return {}

    async def snapshot(self, failures: int = 5) -> QueueSnapshot:
        """Depth, workers and the ``failures`` newest dead letters, for ``taskhub status``.

        Optional: a plugin without it makes ``taskhub status`` say so instead of failing.
        """
        raise UsageError(f"queue plugin {self.name!r} does not support `taskhub status`")

    async def close(self) -> None:
        """Release connections."""


class HttpServerOptions(Options):
    """The options every HTTP server takes, under the same names: a server plugin's
    ``Config`` subclasses this, so configs move between servers unchanged, and the
    options the API itself reads (Retry-After, readiness timeout, body limit) mean the
    same whatever serves it."""

    host: str = Field(
        "127.0.0.1", min_length=1, description="listen address (taskhub run/serve --host)"
    )
    port: int = Field(
        3000, ge=0, le=65_535, description="listen port (--port); 0 picks a free port"
    )
    body_limit: int = Field(
        65_536,
        ge=256,
        le=64 * 1024 * 1024,
        description="largest request body in bytes; a larger one gets 413",
    )
    keep_alive_timeout: float = Field(
        5, ge=0, le=3_600, description="seconds an idle keep-alive connection stays open"
    )
    request_timeout: float = Field(
        30, gt=0, le=3_600, description="seconds a request may take to arrive (else 408)"
    )
    graceful_shutdown: float = Field(
        5, ge=0, le=3_600, description="seconds to finish requests in flight on SIGTERM"
    )
    backlog: int = Field(1024, ge=1, le=65_535, description="connections the listen queue holds")
    unavailable_retry_after: int = Field(
        1,
        ge=1,
        le=3_600,
        description="Retry-After in seconds of a 503 (Redis unreachable, queue full)",
    )
    ready_timeout: float = Field(
        1, gt=0, le=60, description="seconds each GET /ready check may take"
    )
    batch_limit: int = Field(
        100,
        ge=1,
        le=1_000,
        description="most tasks one POST /tasks may hold (a longer batch gets 413); "
        "the whole batch must also fit in body_limit",
    )


def bind_tcp(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (0: a free port), not yet listening: what
    :meth:`Server.bind` returns. Bound here rather than by a framework, which may read
    port 0 as its own default; an address in use is a :class:`taskhub.StartupError`."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError:
            sock.close()
            raise
    except OSError as exc:
        reason = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
        raise StartupError(f"cannot listen on {host}:{port}: {reason or exc}") from exc
    return sock


def http_url(sock: socket.socket) -> str:
    """``http://host:port`` of a bound socket, for :attr:`Server.address`."""
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


class Server(Component):
    """Serves taskhub's HTTP API (``context.http``): an adapter between a web server
    and the API, which decides every status code, body and header
    (:mod:`taskhub.http`).

    A server that implements :meth:`bind` can run as several processes
    (``taskhub serve --workers N``): the supervisor binds once and each process
    serves on the socket it is handed in :attr:`listen_socket`.
    """

    kind = "server"
    # Set before start(): serve on this already-bound socket instead of binding one.
    listen_socket: socket.socket | None = None

    def bind(self) -> socket.socket:
        """The listening socket, bound to the configured address but not yet serving."""
        raise UsageError(
            f"server {self.name!r} cannot share one listening socket among processes: "
            "run it without --workers (or as separate processes on their own ports)"
        )

    def api_options(self) -> ApiOptions:
        """The API's settings that live in the server's config (Retry-After of a 503,
        the readiness check's timeout): from :class:`HttpServerOptions`, else the defaults."""
        if isinstance(self.config, HttpServerOptions):
            c = self.config
            return ApiOptions(c.unavailable_retry_after, c.ready_timeout, c.batch_limit)
        return ApiOptions()

    @property
    def shutdown_grace(self) -> float:
        """How long :meth:`stop` may take to finish requests in flight, in seconds."""
        if isinstance(self.config, HttpServerOptions):
            return self.config.graceful_shutdown
        return 30.0

    async def start(self, context: PluginContext) -> None:
        """Bind (or take :attr:`listen_socket`) and begin serving; return once the
        server accepts connections."""
        raise NotImplementedError

    async def stop(self) -> None:
        """Stop accepting, finish the requests in flight, then return."""
        raise NotImplementedError

    @property
    def address(self) -> str:
        """Where clients reach the server, for the start-up message."""
        return ""


# --------------------------------------------------------------------------- authentication


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request authenticated as: a label for logs and, if the credential is bound
    to one user, that ``user_id`` (the only user it may submit for and read jobs of)."""

    name: str
    user_id: str | None = None


class Unauthenticated(Exception):
    """No credential, or one that is not known: a 401 whose body says ``message``.

    The message is shown to the client, so it must never repeat the credential.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Authenticator(Component):
    """Decides who sends a request to the task endpoints (``auth: {type: ...}``).

    ``authenticate`` runs on every ``POST /task`` and ``GET``/``DELETE /task/{id}``,
    in the event loop and before anything touches Redis, so it must be fast and must
    not do I/O: bind everything it needs (key tables, digests) in ``__init__``.
    """

    kind = "authenticator"
    # False: every request is let in and the server never calls ``authenticate``.
    enabled: ClassVar[bool] = True

    def authenticate(self, headers: Headers) -> Principal:
        """The request's principal, or raise :class:`Unauthenticated`.

        ``headers`` is case-insensitive (``headers.get("x-api-key")``).
        """
        raise NotImplementedError

    @property
    def challenge(self) -> str:
        """The ``WWW-Authenticate`` value of a 401."""
        return 'Bearer realm="taskhub"'

    def security_scheme(self) -> dict[str, Any] | None:
        """The OpenAPI ``securityScheme`` object describing the credential; None for none."""
        return None

    def summary(self) -> str:
        """One line for the start-up log; must not contain a secret."""
        return self.name
