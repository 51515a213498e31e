"""The config file's models: every core key, its type, its bounds and its default.

Component options (a limiter's ``capacity``, a server's ``port``) are not here:
each component validates its own section against its ``Config`` model.
"""

from __future__ import annotations

import re
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import SplitResult, parse_qsl, urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from taskhub.config.problems import validate
from taskhub.config.raw import RawConfig
from taskhub.config.schedules import ScheduleSettings
from taskhub.config.secrets import mask_url
from taskhub.http import HEADER_NAME

REDIS_SCHEMES = ("redis", "rediss", "unix", "memory")
TASK_NAME = r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$"
RULE_NAME = r"^[A-Za-z][A-Za-z0-9_-]{0,31}$"
KEY_SOURCES = ("user", "ip", "task", "constant", "header:<Name>")
DEFAULT_PLUGINS_DIR = "plugins"  # relative to the working directory; the CLI loads it first
MIN_TOKEN_LENGTH = 16  # bearer tokens of the admin endpoint and the dashboard


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


ClusterNodeUrl = Annotated[str, AfterValidator(lambda url: check_cluster_url(check_redis_url(url)))]
SentinelNodeUrl = Annotated[
    str, AfterValidator(lambda url: check_sentinel_url(check_redis_url(url)))
]
SERVICE_NAME = re.compile(r"^[^\s]{1,128}$")


class SentinelSettings(StrictModel):
    """Redis Sentinel: which master to ask for, and the sentinels to ask.

    The master itself is reached with ``redis.url``'s db, login, TLS and timeouts;
    each sentinel with its own URL's, since sentinels often have logins of their own.
    """

    service: str = Field(
        description="the master's name, as the sentinels monitor it (sentinel monitor "
        "<service> ...)",
    )
    nodes: list[SentinelNodeUrl] = Field(
        description="the sentinels: redis://host:26379 or rediss://...; each URL carries "
        "that sentinel's own login and TLS arguments, not the master's",
    )

    @field_validator("service")
    @classmethod
    def _service_name(cls, service: str) -> str:
        if not SERVICE_NAME.match(service):
            raise ValueError(
                f"service {service!r} is not a master name: 1 to 128 characters, no spaces "
                "(the <service> of the sentinels' 'sentinel monitor <service> <host> <port> "
                "<quorum>')"
            )
        return service

    @field_validator("nodes")
    @classmethod
    def _some_nodes(cls, nodes: list[str]) -> list[str]:
        if not nodes:
            raise ValueError(
                "no sentinel to ask for the master: list at least one (redis://host:26379), "
                "better three or more on separate machines"
            )
        return nodes


class RedisSettings(StrictModel):
    """Where limiter state and the queue live."""

    cluster: bool = Field(  # before url and nodes: their checks depend on it
        False,
        description="url is a node of a Redis Cluster (redis:// or rediss://, db 0 only); "
        "every key then carries its shard's hash tag",
    )
    url: str = Field(
        "memory://",
        validate_default=True,
        description="where limiter state and the queue live: redis://, rediss:// (TLS), "
        "unix://, or memory:// (embedded fakeredis: one process, nothing durable); TLS and "
        "login as redis-py's URL arguments (?ssl_ca_certs=...), for every connection",
    )
    nodes: list[ClusterNodeUrl] = Field(
        default_factory=list,
        description="more seed nodes of the cluster (redis://host:port), in case url is "
        "down; needs cluster: true",
    )
    sentinel: SentinelSettings | None = Field(  # after cluster and url: its checks read them
        None,
        description="find the master through Redis Sentinel: url then gives only the "
        "master's db, login, TLS and timeouts, the sentinels give its address; null: url "
        "is the server",
    )
    key_prefix: str = Field(
        "taskhub",
        pattern=r"^[A-Za-z0-9_.:-]{1,64}$",
        description="first part of every limiter key: <prefix>:<rule>:<strategy>:<key>",
    )
    connect_timeout: float = Field(
        2.0, gt=0, le=60, description="seconds to open a connection to Redis"
    )
    socket_timeout: float = Field(
        2.0,
        gt=0,
        le=60,
        description="seconds to wait for an answer; a slower Redis counts as unreachable (503)",
    )

    eviction: Literal["warn", "error"] = Field(
        "warn",
        description="a maxmemory-policy other than noeviction on a Redis taskhub uses "
        "(redis.url, every master of a cluster, limits.redis_url), found at start-up and by "
        "taskhub check: warn logs what it can lose (queued jobs, job state, limiter state) "
        "and the fix; error also refuses to start (exit 2). A policy that cannot be read "
        "(INFO and CONFIG refused, Redis unreachable) is a warning either way",
    )

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, url: str, info: ValidationInfo) -> str:
        check_redis_url(url)
        if info.data.get("cluster"):
            check_cluster_url(url)
        return url

    @field_validator("nodes")
    @classmethod
    def _seed_nodes(cls, nodes: list[str], info: ValidationInfo) -> list[str]:
        if nodes and not info.data.get("cluster"):
            raise ValueError("nodes are seed nodes of a Redis Cluster: set cluster: true too")
        return nodes

    @field_validator("sentinel")
    @classmethod
    def _sentinel_fits(
        cls, sentinel: SentinelSettings | None, info: ValidationInfo
    ) -> SentinelSettings | None:
        if sentinel is None:
            return None
        if info.data.get("cluster"):
            raise ValueError(
                "a Redis Cluster fails over by itself and has no sentinels: use either "
                "sentinel or cluster: true, not both"
            )
        url = info.data.get("url")
        if url is not None and urlsplit(url).scheme.lower() not in ("redis", "rediss"):
            raise ValueError(
                f"redis.url is {mask_url(url)!r}, but with sentinel it gives the master's db, "
                "login and TLS: use redis://[user:password@]<service>[/db] or rediss://..."
            )
        return sentinel


def check_redis_url(url: str) -> str:
    scheme = urlsplit(url).scheme.lower()
    if scheme not in REDIS_SCHEMES:
        allowed = ", ".join(f"{s}://" for s in REDIS_SCHEMES)
        shown = mask_url(url)
        raise ValueError(f"unsupported URL {shown!r}: use one of {allowed}")
    return url


def check_cluster_url(url: str) -> str:
    """Redis Cluster speaks TCP only and has only db 0: say so at load time."""
    parts = _over_tcp(url, "with cluster: true: a Redis Cluster", "redis:// or rediss://")
    db = _db_of(parts) or "0"
    if db != "0":
        raise ValueError(
            f"URL {mask_url(url)!r} selects db {db}, but a Redis Cluster has only db 0: "
            "drop the db from the URL"
        )
    return url


def check_sentinel_url(url: str) -> str:
    """A sentinel speaks TCP, on a port of its own, and has no databases: say so at load
    time."""
    parts = _over_tcp(url, "for a sentinel: a sentinel", "redis://host:26379 or rediss://...")
    try:
        port = parts.port
    except ValueError:
        port = None  # redis-py's parser says what is wrong with it, when the URL is read
    if port is None:
        raise ValueError(
            f"URL {mask_url(url)!r} gives no port: give the sentinel's (usually 26379; "
            "without one, 6379 would be the master's)"
        )
    db = _db_of(parts)
    if db:
        raise ValueError(
            f"URL {mask_url(url)!r} selects db {db}, but a sentinel has no databases: the "
            "master's db is redis.url's"
        )
    return url


def _over_tcp(url: str, what: str, use: str) -> SplitResult:
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("redis", "rediss"):
        raise ValueError(f"unsupported URL {mask_url(url)!r} {what} is reached over TCP, use {use}")
    return parts


def _db_of(parts: SplitResult) -> str | None:
    """The db a URL selects, in its path or its arguments; None if it names none."""
    return parts.path.strip("/") or dict(parse_qsl(parts.query)).get("db")


class ComponentSection(BaseModel):
    """``type`` picks the component; every other key is one of its options."""

    model_config = ConfigDict(extra="allow")
    type: str | None = Field(
        None, description="the component, by the name its plugin registers; null: the default"
    )

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class SinkSection(ComponentSection):
    type: str = Field(description="the sink, by the name its plugin registers")  # required


# A job's options, bounded once: a task's entry overrides the queue's defaults with them.
Attempts = Annotated[
    int,
    Field(
        ge=1,
        le=100,
        description="attempts in total, SAQ's retries: failures, timeouts, RetryLater and "
        "crashes use one each; 1 never retries",
    ),
]
AttemptTimeout = Annotated[
    int,
    Field(
        ge=0,
        le=86_400,
        description="seconds one attempt may run before it is cancelled and counts as "
        "failed; 0: no limit",
    ),
]
RetryDelay = Annotated[
    float, Field(ge=0, le=86_400, description="seconds before the first retry after a failure")
]
RetryBackoff = Annotated[
    float,
    Field(
        ge=0,
        le=86_400,
        description="cap in seconds on the retry delay, which doubles with each failed "
        "attempt; 0: no doubling",
    ),
]
Heartbeat = Annotated[
    float,
    Field(
        ge=0.1,
        le=3_600,
        description="seconds without a heartbeat after which a running job counts as lost "
        "and is run again",
    ),
]


class JobOptions(BaseModel):
    """How a task's jobs run; each unset option takes the queue's default."""

    retries: Attempts | None = Field(
        None, description="attempts in total for this task; null: the queue's retries"
    )
    timeout: AttemptTimeout | None = Field(
        None, description="seconds one attempt may run (0: no limit); null: the queue's timeout"
    )
    retry_delay: RetryDelay | None = Field(
        None, description="seconds before the first retry; null: the queue's retry_delay"
    )
    retry_backoff: RetryBackoff | None = Field(
        None,
        description="cap in seconds on the doubling retry delay (0: no doubling); "
        "null: the queue's retry_backoff",
    )
    heartbeat: Heartbeat | None = Field(
        None,
        description="seconds without a heartbeat before a running job counts as lost; "
        "null: the queue's heartbeat",
    )


# Options of a task entry that the kernel keeps for the queue; handlers may not declare them.
JOB_OPTIONS = tuple(JobOptions.model_fields)


class TaskSection(ComponentSection, JobOptions):
    """A task clients may submit: its handler (``type``, default the task's own name),
    job options, and the handler's own options."""

    cost: int = Field(
        1, ge=1, le=1_000_000, description="what one submission weighs in every rate-limit rule"
    )
    priority: int = Field(
        0,
        ge=-10,
        le=10,
        description="default priority of this task's jobs (higher runs first; a "
        "submission's priority overrides it)",
    )


class RuleSection(ComponentSection):
    """One rate-limit rule: a strategy (``type`` and its options) counted per ``key``."""

    name: str | None = Field(
        None,
        pattern=RULE_NAME,
        description="unique across admission and execution; in headers, 429 bodies, logs and "
        "Redis keys; null: from key (user, ip, task, global, or the header's name)",
    )
    key: str = Field(
        "user",
        description="what the rule counts by: user, ip, task, constant (one key for "
        "everyone) or header:<Name>",
    )
    shadow: bool = Field(False, description="evaluate, charge and report, but never refuse")

    @field_validator("key")
    @classmethod
    def _known_source(cls, key: str) -> str:
        source, _, header = key.partition(":")
        if source == "header" and HEADER_NAME.match(header):
            return key
        if source in KEY_SOURCES and not header:
            return key
        raise ValueError(f"unknown key {key!r}; use one of: {', '.join(KEY_SOURCES)}")

    @property
    def rule_name(self) -> str:
        """The name given, or one derived from the key (``header:X-Api-Key`` -> ``x-api-key``)."""
        if self.name:
            return self.name
        source, _, header = self.key.partition(":")
        return {"constant": "global", "header": header.lower()}.get(source, source)


class DenyCacheSettings(StrictModel):
    """Each server process answers a key Redis refused until its refusal ends, from memory."""

    enabled: bool = Field(True, description="answer refused keys from memory until they may pass")
    max_keys: int = Field(
        10_000,
        ge=1,
        le=10_000_000,
        description="refused keys kept per server process; the least recently refused go first",
    )


class TokenEndpoint(StrictModel):
    """Endpoints off unless enabled, and then only with a bearer token of their own.

    Subclasses name their section and the environment variable the error suggests.
    """

    section: ClassVar[str]
    token_variable: ClassVar[str]

    enabled: bool = Field(False, description="serve the routes; off, they do not exist (404)")
    token: str = Field(
        "",
        description="what clients send as Authorization: Bearer <token>; required when "
        "enabled, 16+ characters, read it from the environment",
    )

    @model_validator(mode="after")
    def _token_when_enabled(self) -> TokenEndpoint:
        if self.enabled and len(self.token) < MIN_TOKEN_LENGTH:
            name = self.section
            raise ValueError(
                f"{name}.enabled needs {name}.token of at least {MIN_TOKEN_LENGTH} characters; "
                f"read it from the environment: token: ${{{self.token_variable}}}"
            )
        return self


class AdminSettings(TokenEndpoint):
    """The ``/admin/limits`` endpoint."""

    section = "admin"
    token_variable = "TASKHUB_ADMIN_TOKEN"


class DashboardSettings(TokenEndpoint):
    """``GET /dashboard`` and its data endpoints, behind a token of their own."""

    section = "dashboard"
    token_variable = "TASKHUB_DASHBOARD_TOKEN"


class LimitsSettings(StrictModel):
    """Rate-limit policies at admission and at execution, and how the limiter fails."""

    admission: list[RuleSection] | None = Field(
        None,
        description="the rules every POST /task must pass, decided in one script; "
        "null: the limiter shorthand (one rule per user)",
    )
    execution: list[RuleSection] = Field(
        default_factory=list,
        description="rules a worker applies before it runs a job (keys: user, task, constant)",
    )
    shadow: bool = Field(False, description="every rule in shadow mode: report, never refuse")
    fail_mode: Literal["closed", "open", "local"] = Field(
        "closed",
        description="while limits.redis_url is unreachable: closed answers 503, open admits "
        "without limits, local limits in each process",
    )
    redis_url: str | None = Field(
        None,
        description="the limiter's own Redis (one server, never a cluster); null: redis.url, "
        "where decision and enqueue are one script",
    )
    deny_cache: DenyCacheSettings = Field(
        default_factory=DenyCacheSettings,
        description="answer refused keys from memory until Redis would admit them",
    )
    trusted_proxies: list[IPv4Network | IPv6Network] = Field(
        default_factory=list,
        description="proxies (addresses or CIDR networks) whose X-Forwarded-For is believed "
        "for key: ip",
    )
    admin: AdminSettings = Field(
        default_factory=AdminSettings,
        description="GET and DELETE /admin/limits/{key}: a key's state, and resetting it",
    )

    @field_validator("redis_url")
    @classmethod
    def _known_scheme(cls, url: str | None) -> str | None:
        return None if not url else check_redis_url(url)

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _networks(cls, value: Any) -> Any:
        if not isinstance(value, list):
            return value
        networks = []
        for item in value:
            try:
                networks.append(ip_network(str(item), strict=False))
            except ValueError:
                raise ValueError(
                    f"{item!r} is not an IP address or network (e.g. 10.0.0.0/8, ::1)"
                ) from None
        return networks


class MetricsSettings(StrictModel):
    """Prometheus metrics: ``/metrics`` on the HTTP server, and a port of its own for a
    worker started alone (``taskhub worker``), which has no HTTP server."""

    enabled: bool = Field(
        True, description="serve Prometheus metrics: GET /metrics, and the worker's port"
    )
    worker_host: str = Field(
        "127.0.0.1",
        min_length=1,
        description="address where taskhub worker serves /metrics (it has no HTTP server)",
    )
    worker_port: int = Field(
        9109, ge=0, le=65_535, description="port of taskhub worker's /metrics; 0 picks a free one"
    )
    depth_timeout: float = Field(
        0.25,
        gt=0,
        le=10,
        description="seconds a scrape waits for the queue depth from Redis before leaving it out",
    )


class LoggingSettings(StrictModel):
    """What taskhub logs to stderr, and how each line looks."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="the lowest level logged (--debug makes it DEBUG)"
    )
    format: Literal["text", "json"] = Field(
        "text",
        description="text: one readable line; json: one object per line, with request_id, "
        "job_id, user_id and task",
    )


class TracingSettings(StrictModel):
    """OpenTelemetry traces (the ``otel`` extra). Where spans go is the standard environment's
    to say: ``OTEL_SERVICE_NAME``, ``OTEL_TRACES_EXPORTER``, ``OTEL_EXPORTER_OTLP_ENDPOINT``."""

    enabled: bool = Field(
        False,
        description="trace each request, admission, job, handler and sink with OpenTelemetry "
        "(needs pip install 'taskhub[otel]'); off: OpenTelemetry is not even imported",
    )
    include_user_id: bool = Field(
        False,
        description="put the submitting user id on spans (taskhub.user_id); off by default, "
        "since a user id may be personal data",
    )


def _default_sinks() -> list[SinkSection]:
    return [SinkSection(type="file_log")]


def _default_tasks() -> dict[str, TaskSection]:
    return {"log_completion": TaskSection()}


class Settings(StrictModel):
    """The whole config file."""

    redis: RedisSettings = Field(
        default_factory=RedisSettings, description="where limiter state and the queue live"
    )
    plugins_dir: str | None = Field(
        DEFAULT_PLUGINS_DIR,
        description="every *.py file and package in it is a plugin (relative to the working "
        "directory); null: none",
    )
    plugins: list[str] = Field(
        default_factory=list, description="more plugin modules, by dotted import path"
    )
    server: ComponentSection = Field(
        default_factory=ComponentSection, description="the HTTP server and its options"
    )
    auth: ComponentSection = Field(
        default_factory=ComponentSection,
        description="who may use POST /task and GET/DELETE /task/{id}, and its options",
    )
    limiter: ComponentSection | None = Field(
        None,
        description="shorthand for one rule per user: a strategy and its options; null: "
        "token_bucket, unless limits.admission lists the rules",
    )
    limits: LimitsSettings = Field(
        default_factory=LimitsSettings,
        description="policies, fail mode, deny cache, shadow mode, execution limits, admin",
    )
    queue: ComponentSection = Field(
        default_factory=ComponentSection,
        description="the queue, its worker and the jobs' default options",
    )
    sinks: list[SinkSection] = Field(
        default_factory=_default_sinks, description="where completions go: each gets every one"
    )
    tasks: dict[str, TaskSection] = Field(
        default_factory=_default_tasks,
        min_length=1,
        description="the tasks clients may submit, by name (a letter, then letters, digits, "
        "_ . -; 64 at most)",
    )
    default_task: str = Field("log_completion", description='the task of a request without "task"')
    metrics: MetricsSettings = Field(
        default_factory=MetricsSettings, description="Prometheus metrics"
    )
    logging: LoggingSettings = Field(
        default_factory=LoggingSettings, description="log level and line format"
    )
    dashboard: DashboardSettings = Field(
        default_factory=DashboardSettings,
        description="GET /dashboard, a live page of traffic, queue and dead letters",
    )
    schedules: list[ScheduleSettings] = Field(
        default_factory=list,
        max_length=1_000,
        description="tasks the workers submit on a cron expression or an interval, each tick "
        "once however many workers run",
    )
    tracing: TracingSettings = Field(
        default_factory=TracingSettings,
        description="OpenTelemetry traces from the request to the job's sinks",
    )

    @field_validator("tasks")
    @classmethod
    def _task_names(cls, tasks: dict[str, TaskSection]) -> dict[str, TaskSection]:
        for name in tasks:
            if not re.match(TASK_NAME, name):
                raise ValueError(
                    f"task name {name!r} must start with a letter and use only letters, "
                    "digits, '_', '.' and '-' (64 characters at most)"
                )
        return tasks


def parse_settings(raw: RawConfig) -> Settings:
    """Validate the core keys; component options are validated by the kernel."""
    return validate(Settings, raw.data, (), raw)
