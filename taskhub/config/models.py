"""Load the YAML config: interpolate the environment, validate, report problems by YAML path.

Values may use ``${VAR}`` and ``${VAR:-default}`` (the default applies when VAR is
unset or empty, as in the shell); ``$${`` writes a literal ``${``. Interpolation
happens per scalar after parsing, so an environment value can never change the
YAML structure. Every error names the YAML path, its line, the value given and
what is allowed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from taskhub.errors import ConfigError, Problem

Loc = tuple[str | int, ...]
M = TypeVar("M", bound=BaseModel)

INTERPOLATION = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
VARIABLE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?$", re.DOTALL)
SECRET_NAME = re.compile(
    r"(^|_)(password|passwd|pass|secret|token|api_?key|credentials?|private_?key)(_|$)", re.I
)
# Secret by position though not by name: the api_key authenticator's keys.
SECRET_FIELDS = frozenset({("auth", "keys", "key")})
REDIS_SCHEMES = ("redis", "rediss", "unix", "memory")
TASK_NAME = r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$"
RULE_NAME = r"^[A-Za-z][A-Za-z0-9_-]{0,31}$"
HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}$")  # an HTTP token
KEY_SOURCES = ("user", "ip", "task", "constant", "header:<Name>")
DEFAULT_TYPES = {
    "server": "sanic",
    "limiter": "token_bucket",
    "queue": "saq",
    "authenticator": "none",
}
MIN_TOKEN_LENGTH = 16  # bearer tokens of guarded endpoints


# --------------------------------------------------------------------------- models


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


ClusterNodeUrl = Annotated[str, AfterValidator(lambda url: check_cluster_url(check_redis_url(url)))]


class RedisSettings(StrictModel):
    """Where limiter state and the queue live."""

    cluster: bool = False  # before url and nodes: their checks depend on it
    url: str = Field("memory://", validate_default=True)
    nodes: list[ClusterNodeUrl] = Field(default_factory=list, description="more seed nodes")
    key_prefix: str = Field("taskhub", pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    connect_timeout: float = Field(2.0, gt=0, le=60)
    socket_timeout: float = Field(2.0, gt=0, le=60)

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


def check_redis_url(url: str) -> str:
    scheme = urlsplit(url).scheme.lower()
    if scheme not in REDIS_SCHEMES:
        allowed = ", ".join(f"{s}://" for s in REDIS_SCHEMES)
        shown = mask_url(url)
        raise ValueError(f"unsupported URL {shown!r}: use one of {allowed}")
    return url


def check_cluster_url(url: str) -> str:
    """Redis Cluster speaks TCP only and has only db 0: say so at load time."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("redis", "rediss"):
        raise ValueError(
            f"unsupported URL {mask_url(url)!r} with cluster: true: a Redis Cluster is "
            "reached over TCP, use redis:// or rediss://"
        )
    db = parts.path.strip("/") or dict(parse_qsl(parts.query)).get("db", "0")
    if db != "0":
        raise ValueError(
            f"URL {mask_url(url)!r} selects db {db}, but a Redis Cluster has only db 0: "
            "drop the db from the URL"
        )
    return url


class ComponentSection(BaseModel):
    """``type`` picks the component; every other key is one of its options."""

    model_config = ConfigDict(extra="allow")
    type: str | None = None

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class SinkSection(ComponentSection):
    type: str  # type: ignore[assignment]  # a sink entry must say which sink


# Options of a task entry that the kernel keeps for the queue; handlers may not declare them.
JOB_OPTIONS = ("retries", "timeout", "retry_delay", "retry_backoff", "heartbeat")


class TaskSection(ComponentSection):
    """A task clients may submit: its handler (``type``, default the task's own name),
    job options, and the handler's own options."""

    retries: int | None = Field(None, ge=1, le=100, description="attempts in total")
    timeout: int | None = Field(None, ge=0, le=86_400, description="seconds one attempt may run")
    retry_delay: float | None = Field(
        None, ge=0, le=86_400, description="seconds before the first retry"
    )
    retry_backoff: float | None = Field(
        None, ge=0, le=86_400, description="cap on the doubling retry delay; 0: no doubling"
    )
    heartbeat: float | None = Field(
        None, ge=0.1, le=3_600, description="seconds without a beat before a job counts as lost"
    )
    cost: int = Field(1, ge=1, le=1_000_000, description="what one submission weighs")


class RuleSection(ComponentSection):
    """One rate-limit rule: a strategy (``type`` and its options) counted per ``key``."""

    name: str | None = Field(None, pattern=RULE_NAME)
    key: str = "user"
    shadow: bool = False

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
    enabled: bool = True
    max_keys: int = Field(10_000, ge=1, le=10_000_000)


class GuardedEndpoint(StrictModel):
    """Endpoints off unless enabled, and then only with a bearer token of their own.

    Subclasses name their section and the environment variable the error suggests.
    """

    section: ClassVar[str]
    token_variable: ClassVar[str]

    enabled: bool = False
    token: str = ""

    @model_validator(mode="after")
    def _token_when_enabled(self) -> GuardedEndpoint:
        if self.enabled and len(self.token) < MIN_TOKEN_LENGTH:
            name = self.section
            raise ValueError(
                f"{name}.enabled needs {name}.token of at least {MIN_TOKEN_LENGTH} characters; "
                f"read it from the environment: token: ${{{self.token_variable}}}"
            )
        return self


class AdminSettings(GuardedEndpoint):
    """The ``/admin/limits`` endpoint."""

    section = "admin"
    token_variable = "TASKHUB_ADMIN_TOKEN"


class DashboardSettings(GuardedEndpoint):
    """``GET /dashboard`` and its data endpoints (README, "Dashboard")."""

    section = "dashboard"
    token_variable = "TASKHUB_DASHBOARD_TOKEN"


class LimitsSettings(StrictModel):
    """Rate-limit policies at admission and at execution, and how the limiter fails."""

    admission: list[RuleSection] | None = None
    execution: list[RuleSection] = Field(default_factory=list)
    shadow: bool = False
    fail_mode: Literal["closed", "open", "local"] = "closed"
    redis_url: str | None = None
    deny_cache: DenyCacheSettings = Field(default_factory=DenyCacheSettings)
    trusted_proxies: list[IPv4Network | IPv6Network] = Field(default_factory=list)
    admin: AdminSettings = Field(default_factory=AdminSettings)

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

    enabled: bool = True
    worker_host: str = Field("127.0.0.1", min_length=1)
    worker_port: int = Field(9109, ge=0, le=65_535, description="0 picks a free port")
    depth_timeout: float = Field(
        0.25, gt=0, le=10, description="seconds a scrape waits for the queue depth"
    )


class LoggingSettings(StrictModel):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"


def _default_sinks() -> list[SinkSection]:
    return [SinkSection(type="file_log")]


def _default_tasks() -> dict[str, TaskSection]:
    return {"log_completion": TaskSection()}


class Settings(StrictModel):
    """The whole config file."""

    redis: RedisSettings = Field(default_factory=RedisSettings)
    plugins_dir: str | None = "plugins"
    plugins: list[str] = Field(default_factory=list)
    server: ComponentSection = Field(default_factory=ComponentSection)
    auth: ComponentSection = Field(default_factory=ComponentSection)
    limiter: ComponentSection | None = None
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    queue: ComponentSection = Field(default_factory=ComponentSection)
    sinks: list[SinkSection] = Field(default_factory=_default_sinks)
    tasks: dict[str, TaskSection] = Field(default_factory=_default_tasks, min_length=1)
    default_task: str = "log_completion"
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    dashboard: DashboardSettings = Field(default_factory=DashboardSettings)

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


# --------------------------------------------------------------------------- loading


@dataclass
class RawConfig:
    """The parsed file: values after interpolation, where each path sits, which are secret."""

    source: str
    data: dict[str, Any]
    lines: dict[Loc, int] = field(default_factory=dict)
    secret_paths: set[Loc] = field(default_factory=set)

    def line_of(self, loc: Loc) -> int | None:
        for end in range(len(loc), -1, -1):
            line = self.lines.get(tuple(loc[:end]))
            if line is not None:
                return line
        return None

    def is_secret(self, loc: Loc) -> bool:
        if any(isinstance(part, str) and SECRET_NAME.search(part) for part in loc):
            return True
        names = tuple(part for part in loc if isinstance(part, str))
        if any(names[: len(field)] == field for field in SECRET_FIELDS):
            return True
        return any(loc[: len(s)] == s for s in self.secret_paths)

    def problem(self, loc: Loc, message: str) -> Problem:
        return Problem(render_path(loc), message, self.line_of(loc))


def load_file(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> RawConfig:
    """Read, parse and interpolate a config file; any failure is a ConfigError."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(source, [Problem("", "file not found")]) from None
    except IsADirectoryError:
        raise ConfigError(source, [Problem("", "is a directory, not a config file")]) from None
    except PermissionError:
        raise ConfigError(source, [Problem("", "permission denied")]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(source, [Problem("", f"not UTF-8 text ({exc.reason})")]) from None
    return load_text(text, source, os.environ if env is None else env)


def load_text(text: str, source: str, env: Mapping[str, str]) -> RawConfig:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = mark.line + 1 if mark is not None else None
        message = f"not valid YAML: {exc.problem or exc}"
        raise ConfigError(source, [Problem("", message, line)]) from None
    except yaml.YAMLError as exc:
        raise ConfigError(source, [Problem("", f"not valid YAML: {exc}")]) from None
    finally:
        loader.dispose()
    if data is None:
        data = {}
    if not isinstance(data, dict):
        found = type(data).__name__
        raise ConfigError(source, [Problem("", f"must be a mapping of options, not a {found}")])
    raw = RawConfig(source=source, data=data)
    problems: list[Problem] = []
    _index_lines(node, (), raw, problems)
    raw.data = _interpolate(data, (), env, raw, problems)
    if problems:
        raise ConfigError(source, problems)
    return raw


def _index_lines(node: yaml.Node | None, loc: Loc, raw: RawConfig, problems: list[Problem]) -> None:
    """Record the line of every path, and reject duplicate keys (YAML would keep the last)."""
    if node is None:
        return
    raw.lines.setdefault(loc, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for key_node, value_node in node.value:
            key = key_node.value
            if key in seen:
                problems.append(
                    Problem(render_path((*loc, key)), "duplicate key", key_node.start_mark.line + 1)
                )
            seen.add(key)
            raw.lines[(*loc, key)] = key_node.start_mark.line + 1
            _index_lines(value_node, (*loc, key), raw, problems)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _index_lines(item, (*loc, index), raw, problems)


def _interpolate(
    value: Any, loc: Loc, env: Mapping[str, str], raw: RawConfig, problems: list[Problem]
) -> Any:
    if isinstance(value, dict):
        return {k: _interpolate(v, (*loc, k), env, raw, problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, (*loc, i), env, raw, problems) for i, v in enumerate(value)]
    if not isinstance(value, str) or "$" not in value:
        return value

    def substitute(match: re.Match[str]) -> str:
        text = match.group(0)
        if text == "$${":
            return "${"
        body = match.group(1)
        parsed = VARIABLE.match(body) if body is not None else None
        if parsed is None:
            problems.append(
                raw.problem(loc, f"malformed {text!r}: write ${{NAME}} or ${{NAME:-default}}")
            )
            return text
        name, default = parsed.group(1), parsed.group(2)
        if SECRET_NAME.search(name):
            raw.secret_paths.add(loc)
        current = env.get(name)
        if default is not None and not current:
            return default
        if current is None:
            problems.append(
                raw.problem(
                    loc,
                    f"environment variable {name} is not set "
                    f"(set it, or give a default: ${{{name}:-value}})",
                )
            )
            return text
        return current

    return INTERPOLATION.sub(substitute, value)


# --------------------------------------------------------------------------- validation


def parse_settings(raw: RawConfig) -> Settings:
    """Validate the core keys; component options are validated by the kernel."""
    return validate(Settings, raw.data, (), raw)


def validate(model: type[M], data: Any, loc: Loc, raw: RawConfig) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(raw.source, problems_from(exc, model, loc, raw)) from None


def problems_from(
    exc: ValidationError, model: type[BaseModel], prefix: Loc, raw: RawConfig
) -> list[Problem]:
    problems = []
    for error in exc.errors(include_url=False):
        inner: Loc = tuple(p for p in error["loc"] if not _is_union_tag(p))
        loc = (*prefix, *inner)
        kind = error["type"]
        if kind == "extra_forbidden":
            allowed = allowed_keys(model, inner[:-1])
            message = f"unknown option {inner[-1]!r}"
            if allowed:
                message += f"; allowed here: {', '.join(allowed)}"
        elif kind == "missing":
            message = "required, but missing"
        else:
            message = _lower_first(str(error["msg"]))
            given = mask_secrets(error.get("input"), loc, raw)  # a mapping may hold secrets
            message += f" (got {show_value(given, raw.is_secret(loc))})"
        problems.append(raw.problem(loc, message))
    return problems


def allowed_keys(model: type[BaseModel], loc: Loc) -> list[str]:
    """The option names a model accepts at ``loc``, walking nested models."""
    current: Any = model
    for part in loc:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        info = current.model_fields.get(str(part))
        if info is None:
            return []
        current = info.annotation
    if isinstance(current, type) and issubclass(current, BaseModel):
        return sorted(name for name, f in current.model_fields.items() if not f.exclude)
    return []


def show_value(value: Any, secret: bool = False) -> str:
    if secret:
        return "'***'"
    if isinstance(value, str) and "://" in value:
        value = mask_url(value)
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def render_path(loc: Loc) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _is_union_tag(part: str | int) -> bool:
    # pydantic adds the union member's type name to the location; users never wrote it.
    return isinstance(part, str) and part in {"str", "int", "float", "bool", "none"}


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


# --------------------------------------------------------------------------- masking


def mask_url(url: str) -> str:
    """Hide the password in a URL, keeping everything else readable."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "***"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def mask_secrets(value: Any, loc: Loc, raw: RawConfig) -> Any:
    """A copy of ``value`` fit to print: secrets replaced, URL passwords hidden."""
    if isinstance(value, dict):
        return {k: mask_secrets(v, (*loc, k), raw) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_secrets(v, (*loc, i), raw) for i, v in enumerate(value)]
    if isinstance(value, str) and "://" in value and mask_url(value) != value:
        return mask_url(value)  # the password hidden, the rest still readable
    if raw.is_secret(loc) and value not in (None, ""):
        return "***"
    return value


def secret_values(raw: RawConfig) -> set[str]:
    """Every secret in the config, as the log formatters must hide it.

    The same rules as :func:`mask_secrets`: URL passwords (as written and
    decoded) and every value at a secret path.
    """
    found: set[str] = set()

    def walk(value: Any, loc: Loc) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(item, (*loc, key))
        elif isinstance(value, list):
            for index, item in enumerate(value):
                walk(item, (*loc, index))
        elif isinstance(value, str) and value:
            if "://" in value:
                try:
                    password = urlsplit(value).password
                except ValueError:
                    password = None
                if password:
                    found.update((password, unquote(password)))
            if raw.is_secret(loc):
                found.add(value)

    walk(raw.data, ())
    return found
