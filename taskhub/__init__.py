"""taskhub: admit tasks over HTTP, rate-limit them per user in Redis, run them on workers.

This is the public surface: every name a plugin author needs, re-exported here.
Anything imported from elsewhere in the package is the kernel's own and may change.

Every name is imported on first use (PEP 562), not with the package: importing
``taskhub.client`` (or any other module) runs this file, and the kernel's modules
bring Redis and Sanic with them, which a client must not need.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from taskhub.bearer import bearer_credentials, bearer_token_ok
    from taskhub.components import (
        Authenticator,
        HttpServerOptions,
        Limiter,
        Options,
        PreparedJob,
        Principal,
        QueueBackend,
        RatePolicy,
        Server,
        Sink,
        TaskHandler,
        Unauthenticated,
        bind_tcp,
        http_url,
    )
    from taskhub.config.models import (
        Attempts,
        AttemptTimeout,
        Heartbeat,
        JobOptions,
        RetryBackoff,
        RetryDelay,
    )
    from taskhub.context import (
        HttpHandler,
        JobCounters,
        JobRunner,
        PluginContext,
        Role,
        RoleError,
        ScriptCall,
        ScriptConnection,
    )
    from taskhub.errors import (
        BackendUnavailable,
        ConfigError,
        StartupError,
        TaskhubError,
        UnstorablePayload,
        UsageError,
    )
    from taskhub.hookspecs import hookimpl
    from taskhub.http import ApiOptions, Headers, HttpRequest, HttpResponse
    from taskhub.jobs import (
        AbortOutcome,
        AbortResult,
        Completion,
        Failure,
        JobInfo,
        JobStatus,
        QueueSnapshot,
        RetryLater,
        Task,
        TaskSpec,
        WorkerStatus,
    )
    from taskhub.limits.admission import Decision
    from taskhub.limits.headers import rate_limit_headers, retry_after
    from taskhub.limits.policy import Outcome, RequestContext, RuleResult
    from taskhub.store.clients import redis_call
    from taskhub.store.sharding import Shards
    from taskhub.version import __version__

# Where each public name is defined: :func:`__getattr__` imports it from there.
_ORIGINS: dict[str, tuple[str, ...]] = {
    "taskhub.bearer": ("bearer_credentials", "bearer_token_ok"),
    "taskhub.components": (
        "Authenticator",
        "HttpServerOptions",
        "Limiter",
        "Options",
        "PreparedJob",
        "Principal",
        "QueueBackend",
        "RatePolicy",
        "Server",
        "Sink",
        "TaskHandler",
        "Unauthenticated",
        "bind_tcp",
        "http_url",
    ),
    "taskhub.config.models": (
        "Attempts",
        "AttemptTimeout",
        "Heartbeat",
        "JobOptions",
        "RetryBackoff",
        "RetryDelay",
    ),
    "taskhub.context": (
        "HttpHandler",
        "JobCounters",
        "JobRunner",
        "PluginContext",
        "Role",
        "RoleError",
        "ScriptCall",
        "ScriptConnection",
    ),
    "taskhub.errors": (
        "BackendUnavailable",
        "ConfigError",
        "StartupError",
        "TaskhubError",
        "UnstorablePayload",
        "UsageError",
    ),
    "taskhub.hookspecs": ("hookimpl",),
    "taskhub.http": ("ApiOptions", "Headers", "HttpRequest", "HttpResponse"),
    "taskhub.jobs": (
        "AbortOutcome",
        "AbortResult",
        "Completion",
        "Failure",
        "JobInfo",
        "JobStatus",
        "QueueSnapshot",
        "RetryLater",
        "Task",
        "TaskSpec",
        "WorkerStatus",
    ),
    "taskhub.limits.admission": ("Decision",),
    "taskhub.limits.headers": ("rate_limit_headers", "retry_after"),
    "taskhub.limits.policy": ("Outcome", "RequestContext", "RuleResult"),
    "taskhub.store.clients": ("redis_call",),
    "taskhub.store.sharding": ("Shards",),
    "taskhub.version": ("__version__",),
}
_ORIGIN = {name: module for module, names in _ORIGINS.items() for name in names}


def __getattr__(name: str) -> Any:
    """Import a public name on its first use, then keep it as a plain attribute."""
    module = _ORIGIN.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__all__ = [
    "AbortOutcome",
    "AbortResult",
    "ApiOptions",
    "AttemptTimeout",
    "Attempts",
    "Authenticator",
    "BackendUnavailable",
    "Completion",
    "ConfigError",
    "Decision",
    "Failure",
    "Headers",
    "Heartbeat",
    "HttpHandler",
    "HttpRequest",
    "HttpResponse",
    "HttpServerOptions",
    "JobCounters",
    "JobInfo",
    "JobOptions",
    "JobRunner",
    "JobStatus",
    "Limiter",
    "Options",
    "Outcome",
    "PluginContext",
    "PreparedJob",
    "Principal",
    "QueueBackend",
    "QueueSnapshot",
    "RatePolicy",
    "RequestContext",
    "RetryBackoff",
    "RetryDelay",
    "RetryLater",
    "Role",
    "RoleError",
    "RuleResult",
    "ScriptCall",
    "ScriptConnection",
    "Server",
    "Shards",
    "Sink",
    "StartupError",
    "Task",
    "TaskHandler",
    "TaskSpec",
    "TaskhubError",
    "Unauthenticated",
    "UnstorablePayload",
    "UsageError",
    "WorkerStatus",
    "__version__",
    "bearer_credentials",
    "bearer_token_ok",
    "bind_tcp",
    "hookimpl",
    "http_url",
    "rate_limit_headers",
    "redis_call",
    "retry_after",
]
