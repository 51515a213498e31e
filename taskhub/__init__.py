"""taskhub: admit tasks over HTTP, rate-limit them per user in Redis, run them on workers.

This is the public surface: every name a plugin author needs, re-exported here.
Anything imported from elsewhere in the package is the kernel's own and may change.
"""

from __future__ import annotations

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
