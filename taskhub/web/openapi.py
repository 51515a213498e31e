"""The HTTP API as an OpenAPI 3.1 document, built from the pydantic models that define it.

The request schema is ``TaskRequest``'s own, the model that validates every
``POST /task`` body, so the document cannot drift from what the server accepts.
The response models below describe bodies the server writes as plain dicts
(building them through pydantic would cost the hot path); the schemathesis test
checks live responses against them. The admin endpoint's and the dashboard's
bodies are documented from the TypedDicts their code returns, so each shape is
written down once.
"""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter
from pydantic.json_schema import JsonSchemaMode

from taskhub.jobs import MAX_WAIT
from taskhub.limits.admin import LimitsReset, LimitsShown
from taskhub.monitoring.dashboard import Summary
from taskhub.monitoring.request_id import HEADER as REQUEST_ID
from taskhub.monitoring.request_id import MAX_LENGTH as REQUEST_ID_LENGTH
from taskhub.version import __version__
from taskhub.web.batch import BatchItem
from taskhub.web.models import (
    BatchResults,
    Conflict,
    Error,
    Health,
    Job,
    NotReady,
    Queued,
    RateLimited,
    Ready,
    Requeued,
    Weight,
    WeightRequest,
)
from taskhub.web.submission import IDEMPOTENCY_KEY, TaskRequest

REF = "#/components/schemas/{model}"
JSON = "application/json"
SECURITY_SCHEME = "apiKey"
# The admin endpoint and the dashboard each check their own token: two schemes, so that
# Swagger UI's "Authorize" asks for each.
ADMIN_SCHEME = "adminToken"
DASHBOARD_SCHEME = "dashboardToken"
METHODS = ("get", "post", "put", "delete")


RESPONSE_MODELS: tuple[type[Any], ...] = (
    Queued,
    BatchResults,
    Error,
    RateLimited,
    Job,
    Conflict,
    Health,
    Ready,
    NotReady,
    Requeued,
    LimitsShown,
    LimitsReset,
    Summary,
    Weight,
)


def _integer(description: str) -> dict[str, Any]:
    return {"description": description, "schema": {"type": "integer"}}


def _string(description: str) -> dict[str, Any]:
    return {"description": description, "schema": {"type": "string"}}


HEADERS: dict[str, dict[str, Any]] = {
    "X-RateLimit-Limit": _integer("the deciding rule's quota"),
    "X-RateLimit-Remaining": _integer("what the deciding rule has left after this request"),
    "X-RateLimit-Reset": _integer("Unix time (s, Redis clock) when the quota is whole again"),
    "RateLimit-Policy": _string('IETF draft, every rule: "token_bucket";q=20;w=60'),
    "RateLimit": _string('IETF draft, every rule: "token_bucket";r=0;t=60'),
    "Retry-After": {
        "description": "whole seconds to wait before retrying",
        "schema": {"type": "integer", "minimum": 1},
    },
    "Idempotent-Replayed": {
        "description": "the Idempotency-Key named an existing job: nothing new was queued",
        "schema": {"type": "string", "enum": ["true"]},
    },
    "WWW-Authenticate": _string("how to authenticate: the scheme and its realm"),
    "Cache-Control": {
        "description": "the answer holds live state or a secret's verdict: never cache it",
        "schema": {"type": "string", "enum": ["no-store"]},
    },
    "Content-Security-Policy": _string("the page's own inline script and style, by hash"),
    "X-Content-Type-Options": {
        "description": "take the content type as given",
        "schema": {"type": "string", "enum": ["nosniff"]},
    },
    "Referrer-Policy": {
        "description": "send no Referer from the page",
        "schema": {"type": "string", "enum": ["no-referrer"]},
    },
    REQUEST_ID: {
        "description": "the request's id: the client's X-Request-ID if it was sane, else a new one",
        "required": True,
        "schema": {"type": "string", "minLength": 1, "maxLength": REQUEST_ID_LENGTH},
    },
}
REQUEST_ID_PARAMETER = {
    "name": REQUEST_ID,
    "in": "header",
    "required": False,
    "description": (
        f"an id for this request's log lines and its job's; kept when it is 1-{REQUEST_ID_LENGTH} "
        "visible ASCII characters without spaces, otherwise replaced by a new one"
    ),
    "schema": {"type": "string"},
}
RATE_HEADERS = (
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
    "RateLimit-Policy",
    "RateLimit",
)


def _headers(*names: str) -> dict[str, Any]:
    return {name: {"$ref": f"#/components/headers/{name}"} for name in names}


def _response(description: str, *models: type[Any], headers: tuple[str, ...] = ()) -> Any:
    refs = [{"$ref": REF.format(model=m.__name__)} for m in models]
    schema = refs[0] if len(refs) == 1 else {"oneOf": refs}
    response: dict[str, Any] = {"description": description, "content": {JSON: {"schema": schema}}}
    if headers:
        response["headers"] = _headers(*headers)
    return response


def _unavailable(description: str) -> Any:
    return _response(description, Error, headers=("Retry-After",))


def _path_param(name: str, description: str) -> dict[str, Any]:
    schema = {"type": "string", "minLength": 1}
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": schema,
    }


JOB_ID = _path_param("job_id", "the id POST /task answered with")
WAIT = {
    "name": "wait",
    "in": "query",
    "required": False,
    "description": "seconds to wait for the job to settle (plain decimal, given once); "
    "a client that hangs up stops the wait",
    "schema": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_WAIT},
}
ADMIN_AUTH = {"type": "http", "scheme": "bearer", "description": "limits.admin.token"}
DASHBOARD_AUTH = {"type": "http", "scheme": "bearer", "description": "dashboard.token"}
NOT_FOUND = _response("no such job, or it has expired", Error)
STORE_DOWN = _unavailable("Redis is unreachable")


ANY_ITEM = {"description": "anything else: answered invalid, with its problems, in its place"}


def _batch(limit: int) -> dict[str, Any]:
    """``POST /tasks``: its items are ``POST /task`` bodies, each with its own key."""
    body = {
        "type": "object",
        "additionalProperties": False,
        "required": ["tasks"],
        "properties": {
            "tasks": {
                "type": "array",
                "minItems": 1,
                "maxItems": limit,
                "description": f"at most server.batch_limit ({limit}) tasks, decided in order",
                # Any other value is not refused: it is answered invalid in its place.
                "items": {"anyOf": [{"$ref": REF.format(model="BatchItem")}, ANY_ITEM]},
            }
        },
    }
    return {
        "summary": "Submit several tasks",
        "description": (
            "Each item is decided as POST /task decides one, in order, each seeing the "
            "charges of those before it, in one round trip to Redis. A bad item is "
            "answered invalid and does not spoil the others; nothing is charged or "
            "queued for an item that is not queued. The rate-limit headers are those "
            "of the last item decided."
        ),
        "operationId": "submitTasks",
        "requestBody": {"required": True, "content": {JSON: {"schema": body}}},
        "responses": {
            "200": _response("one result per item, in order", BatchResults, headers=RATE_HEADERS),
            "400": _response(
                "the body is not JSON or not an object; an Idempotency-Key header (keys go "
                "in the items)",
                Error,
            ),
            "413": _response(
                "more tasks than server.batch_limit (batch_too_large), or the body is over "
                "server.body_limit",
                Error,
            ),
            "415": _response("a Content-Type that is not JSON", Error),
            "422": _response("tasks is missing, not a list or empty; an unknown field", Error),
            "503": _unavailable("Redis is unreachable: nothing was decided"),
        },
    }


def _paths(batch_limit: int) -> dict[str, Any]:
    submit = {
        "summary": "Submit a task",
        "description": "Spends the user's rate limit and stores the job, in one step.",
        "operationId": "submitTask",
        "parameters": [
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "description": "the same key from the same user always names the same job",
                "schema": {"type": "string", "pattern": IDEMPOTENCY_KEY.pattern},
            }
        ],
        "requestBody": {
            "required": True,
            "content": {JSON: {"schema": {"$ref": REF.format(model="TaskRequest")}}},
        },
        "responses": {
            "200": _response(
                "the job is stored (or, replayed, was already)",
                Queued,
                headers=(*RATE_HEADERS, "Idempotent-Replayed"),
            ),
            "400": _response(
                "the body is not JSON or not an object; or a malformed Idempotency-Key", Error
            ),
            "413": _response("the body is over server.body_limit", Error),
            "415": _response("a Content-Type that is not JSON", Error),
            "422": _response("a field is missing or wrong; unknown task; bad payload", Error),
            "429": _response(
                "a rate-limit rule refused", RateLimited, headers=(*RATE_HEADERS, "Retry-After")
            ),
            "503": _response(
                "Redis is unreachable (unavailable) or the queue is full (queue_full)",
                Error,
                headers=(*RATE_HEADERS, "Retry-After"),
            ),
        },
    }
    job_state = _response("the job's state", Job)
    status = {
        "summary": "A job's state",
        "description": "With `wait`, the answer comes as soon as the job settles (complete, "
        "failed or aborted), or after `wait` seconds with its state then: no polling.",
        "operationId": "getTask",
        "parameters": [WAIT],
        "responses": {
            "200": job_state,
            "404": NOT_FOUND,
            "422": _response("`wait` is not a number of seconds within its bounds", Error),
            "503": STORE_DOWN,
        },
    }
    abort = {
        "summary": "Abort a job",
        "operationId": "abortTask",
        "responses": {
            "200": _response("it was waiting: aborted", Job),
            "202": _response(
                "it is running: it ends aborted, never retried, whatever its handler does; "
                "its worker cancels it within about a second",
                Job,
            ),
            "404": NOT_FOUND,
            "409": _response("it had already finished; left as it was", Conflict),
            "503": STORE_DOWN,
        },
    }
    health = {
        "summary": "Liveness",
        "operationId": "health",
        "responses": {"200": _response("the process serves", Health)},
    }
    ready = {
        "summary": "Readiness: Redis and the queue answer",
        "operationId": "ready",
        "responses": {
            "200": _response("ready to admit tasks", Ready),
            "503": _response("a dependency is unreachable", NotReady, headers=("Retry-After",)),
        },
    }
    metrics = {
        "summary": "Prometheus metrics",
        "operationId": "metrics",
        "responses": {
            "200": {
                "description": "the text exposition format",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }
        },
    }
    spec = {
        "summary": "This document",
        "operationId": "openapi",
        "responses": {"200": {"description": "OpenAPI 3.1", "content": {JSON: {"schema": {}}}}},
    }
    docs = {
        "summary": "This document, rendered",
        "operationId": "docs",
        "responses": {
            "200": {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}}
        },
    }
    return {
        "/task": {"post": submit},
        "/tasks": {"post": _batch(batch_limit)},
        "/task/{job_id}": {"parameters": [JOB_ID], "get": status, "delete": abort},
        "/health": {"get": health},
        "/ready": {"get": ready},
        "/metrics": {"get": metrics},
        "/openapi.json": {"get": spec},
        "/docs": {"get": docs},
    }


def _operations(paths: dict[str, Any]) -> list[dict[str, Any]]:
    return [item[method] for item in paths.values() for method in METHODS if method in item]


def _track_requests(paths: dict[str, Any]) -> None:
    """Every operation takes an ``X-Request-ID`` and every response returns one."""
    tracked = _headers(REQUEST_ID)
    for operation in _operations(paths):
        operation["parameters"] = [*operation.get("parameters", []), REQUEST_ID_PARAMETER]
        operation["responses"] = {  # new dicts: some responses are shared constants
            code: {**response, "headers": {**response.get("headers", {}), **tracked}}
            for code, response in operation["responses"].items()
        }


def _secure(paths: dict[str, Any]) -> None:
    """The task endpoints need the credential: 401 without a known one, and 403 from
    ``POST /task`` for a key bound to another user (whose jobs are then 404s)."""
    unauthorized = _response(
        "no credential, or an unknown one", Error, headers=("WWW-Authenticate",)
    )
    forbidden = _response("the key is bound to another user than the body's user_id", Error)
    task, job = paths["/task"], paths["/task/{job_id}"]
    for operation in (task["post"], paths["/tasks"]["post"], job["get"], job["delete"]):
        operation["security"] = [{SECURITY_SCHEME: []}]
        operation["responses"]["401"] = unauthorized
    task["post"]["responses"]["403"] = forbidden


def _token_guarded(description: str, *models: type[Any], headers: tuple[str, ...] = ()) -> Any:
    """A response of a route that checks its own bearer token: never to be cached."""
    return _response(description, *models, headers=(*headers, "Cache-Control"))


NO_TOKEN = "no bearer token, or (dashboard) a wrong one"
UNAVAILABLE = "Redis is unreachable"


def _admin_paths() -> dict[str, Any]:
    """``/admin/limits/{key}`` (limits.admin.enabled), behind ``limits.admin.token``."""
    key = _path_param(
        "key", "what the rules count: a user id, an IP, ...; percent-decoded once (%2F for a slash)"
    )
    rule = {
        "name": "rule",
        "in": "query",
        "required": False,
        "description": "only this rule (default: every rule of both stages)",
        "schema": {"type": "string"},
    }
    refusals = {
        "400": _response(
            "the key is not percent-encoded UTF-8 (bad_request) or no rule has "
            "that name (unknown_rule)",
            Error,
        ),
        "401": _response("no bearer token", Error, headers=("WWW-Authenticate",)),
        "403": _response("not limits.admin.token", Error),
        "503": _unavailable(UNAVAILABLE),
    }
    show = {
        "summary": "A key's rate-limit state",
        "description": "Each rule's state, and whether the next request would pass; "
        "changes nothing.",
        "operationId": "showLimits",
        "security": [{ADMIN_SCHEME: []}],
        "responses": {"200": _response("the key's state", LimitsShown), **refusals},
    }
    reset = {
        "summary": "Reset a key's rate-limit state",
        "description": "Without a rule, shared counters and held slots are kept (see kept).",
        "operationId": "resetLimits",
        "security": [{ADMIN_SCHEME: []}],
        "responses": {"200": _response("what was deleted, and kept", LimitsReset), **refusals},
    }
    return {
        "/admin/limits/{key}": {"parameters": [key, rule], "get": show, "delete": reset},
        **_weight_paths(refusals),
    }


def _weight_paths(refusals: dict[str, Any]) -> dict[str, Any]:
    """``/admin/weights/{user_id}``: a user's jobs per turn under fair scheduling."""
    user = _path_param("user_id", "the user; percent-decoded once")
    guarded: dict[str, Any] = {"security": [{ADMIN_SCHEME: []}]}
    weight = _response("the weight in force", Weight)
    refused = {key: value for key, value in refusals.items() if key != "400"}
    refused["400"] = _response("the user id is not percent-encoded UTF-8", Error)
    put = {
        "summary": "Set a user's weight",
        "description": "Takes effect at the user's next turn, in every shard.",
        "operationId": "setWeight",
        **guarded,
        "requestBody": {
            "required": True,
            "content": {JSON: {"schema": {"$ref": REF.format(model="WeightRequest")}}},
        },
        "responses": {
            "200": weight,
            **refused,
            "400": _response("the body is not a JSON object, or a bad user id", Error),
            "413": _response("the body is over server.body_limit", Error),
            "422": _response("weight is missing or not 1 to 1000", Error),
        },
    }
    return {
        "/admin/weights/{user_id}": {
            "parameters": [user],
            "get": {
                "summary": "A user's weight",
                "description": "Jobs the user takes per turn with queue.fairness user.",
                "operationId": "showWeight",
                **guarded,
                "responses": {"200": weight, **refused},
            },
            "put": put,
            "delete": {
                "summary": "Reset a user's weight",
                "description": "Back to queue.weights in the config, else 1.",
                "operationId": "resetWeight",
                **guarded,
                "responses": {"200": weight, **refused},
            },
        }
    }


def _dashboard_paths() -> dict[str, Any]:
    """``/dashboard`` (dashboard.enabled): a public page; its data behind ``dashboard.token``."""
    page_headers = ("Content-Security-Policy", "X-Content-Type-Options", "Referrer-Policy")
    page = {
        "summary": "The dashboard page",
        "description": "Static: it holds no data and asks for the token itself.",
        "operationId": "dashboard",
        "security": [],
        "responses": {
            "200": {
                "description": "HTML",
                "content": {"text/html": {"schema": {"type": "string"}}},
                "headers": _headers(*page_headers, "Cache-Control"),
            }
        },
    }
    refused = _token_guarded(NO_TOKEN, Error, headers=("WWW-Authenticate",))
    unavailable = _token_guarded(UNAVAILABLE, Error, headers=("Retry-After",))
    summary = {
        "summary": "What the dashboard shows",
        "description": "Traffic from every server and the queue's state, at most 1 s old.",
        "operationId": "dashboardSummary",
        "security": [{DASHBOARD_SCHEME: []}],
        "responses": {
            "200": _token_guarded("the summary", Summary),
            "401": refused,
            "501": _token_guarded("the queue plugin cannot take snapshots", Error),
            "503": unavailable,
        },
    }
    job_id = {**JOB_ID, "description": "a dead letter's id"}
    retry = {
        "summary": "Queue a dead letter again",
        "description": "With fresh attempts, as taskhub jobs retry.",
        "operationId": "retryDeadLetter",
        "security": [{DASHBOARD_SCHEME: []}],
        "parameters": [job_id],
        "responses": {
            "200": _token_guarded("queued again", Requeued),
            "400": _token_guarded("job_id is longer than any id a queue makes", Error),
            "401": refused,
            "404": _token_guarded("no such dead letter (retried, purged or expired)", Error),
            "413": _response("the body is over server.body_limit", Error),
            "503": unavailable,
        },
    }
    return {
        "/dashboard": {"get": page},
        "/dashboard/api/summary": {"get": summary},
        "/dashboard/api/failed/{job_id}/retry": {"post": retry},
    }


def build_spec(
    security_scheme: dict[str, Any] | None = None,
    *,
    metrics: bool = True,
    admin: bool = False,
    dashboard: bool = False,
    batch_limit: int = 100,
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the HTTP API as configured.

    ``security_scheme`` is the configured authenticator's (None: no authentication);
    ``metrics``, ``admin`` and ``dashboard`` say whether ``GET /metrics``,
    ``/admin/limits/{key}`` (and ``/admin/weights/{user_id}``) and ``/dashboard`` are
    served; ``batch_limit`` is how many tasks ``POST /tasks`` takes.
    """
    adapters: list[tuple[str, JsonSchemaMode, TypeAdapter[Any]]] = [
        ("TaskRequest", "validation", TypeAdapter(TaskRequest)),
        ("BatchItem", "validation", TypeAdapter(BatchItem)),
        ("WeightRequest", "validation", TypeAdapter(WeightRequest)),
    ]
    adapters += [(m.__name__, "serialization", TypeAdapter(m)) for m in RESPONSE_MODELS]
    _, schemas = TypeAdapter.json_schemas(adapters, ref_template=REF)
    paths = _paths(batch_limit)
    if not metrics:
        del paths["/metrics"]
    components: dict[str, Any] = {"schemas": schemas.get("$defs", {}), "headers": HEADERS}
    schemes: dict[str, Any] = {}
    if security_scheme is not None:
        _secure(paths)
        schemes[SECURITY_SCHEME] = security_scheme
    guarded = (
        (admin, _admin_paths, ADMIN_SCHEME, ADMIN_AUTH),
        (dashboard, _dashboard_paths, DASHBOARD_SCHEME, DASHBOARD_AUTH),
    )
    for enabled, guarded_paths, name, scheme in guarded:
        if enabled:
            paths.update(guarded_paths())
            schemes[name] = scheme
    if schemes:
        components["securitySchemes"] = schemes
    _track_requests(paths)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "taskhub",
            "version": __version__,
            "description": "Admit tasks over HTTP, rate-limited per user; run them on workers.",
        },
        "paths": paths,
        "components": components,
    }
