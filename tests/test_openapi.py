"""The OpenAPI document: well-formed 3.1, built from the request model, served live,
and true of the live server (schemathesis)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any
from unittest.mock import ANY

import httpx
import jsonschema_rs
import orjson
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.config import SchemathesisConfig
from schemathesis.generation import GenerationMode

from taskhub.monitoring.dashboard import Summary
from taskhub.monitoring.snapshot import QueueJson
from taskhub.web.openapi import Conflict, Job, Queued, build_spec
from taskhub.web.submission import TaskRequest
from tests.support.configs import config_dict
from tests.support.namespaces import Namespace

METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
DOCUMENTED = {
    ("/task", "post"): {"200", "400", "413", "415", "422", "429", "503"},
    ("/tasks", "post"): {"200", "400", "413", "415", "422", "503"},
    ("/task/{job_id}", "get"): {"200", "404", "422", "503"},
    ("/task/{job_id}", "delete"): {"200", "202", "404", "409", "503"},
    ("/health", "get"): {"200"},
    ("/ready", "get"): {"200", "503"},
    ("/metrics", "get"): {"200"},
    ("/openapi.json", "get"): {"200"},
    ("/docs", "get"): {"200"},
}
BEARER = {"type": "http", "scheme": "bearer"}
ADMIN = {
    ("/admin/limits/{key}", "get"): {"200", "400", "401", "403", "503"},
    ("/admin/limits/{key}", "delete"): {"200", "400", "401", "403", "503"},
    ("/admin/weights/{user_id}", "get"): {"200", "400", "401", "403", "503"},
    ("/admin/weights/{user_id}", "put"): {"200", "400", "401", "403", "413", "422", "503"},
    ("/admin/weights/{user_id}", "delete"): {"200", "400", "401", "403", "503"},
}
DASHBOARD = {
    ("/dashboard", "get"): {"200"},
    ("/dashboard/api/summary", "get"): {"200", "401", "501", "503"},
    ("/dashboard/api/failed/{job_id}/retry", "post"): {"200", "400", "401", "404", "413", "503"},
}
ADMIN_TOKEN = "openapi-admin-token-0123456789"
DASHBOARD_TOKEN = "openapi-dashboard-token-0123456789"


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from refs(item)


def resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def test_the_document_is_openapi_3_1() -> None:
    assert_well_formed(json.loads(orjson.dumps(build_spec())))  # as served: plain JSON


def test_with_auth_the_task_endpoints_need_the_key_and_document_401_and_403() -> None:
    spec = json.loads(orjson.dumps(build_spec(BEARER)))
    protected = {
        ("/task", "post"),
        ("/tasks", "post"),
        ("/task/{job_id}", "get"),
        ("/task/{job_id}", "delete"),
    }
    expected = {
        op: codes | ({"401"} if op in protected else set()) for op, codes in DOCUMENTED.items()
    }
    expected[("/task", "post")].add("403")
    assert_well_formed(spec, expected)
    assert spec["components"]["securitySchemes"] == {"apiKey": BEARER}
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method in METHODS:
                secured = operation.get("security") == [{"apiKey": []}]
                assert secured == ((path, method) in protected), (path, method)
    unauthorized = spec["paths"]["/task"]["post"]["responses"]["401"]
    assert "WWW-Authenticate" in unauthorized["headers"]
    assert "securitySchemes" not in build_spec()["components"]


def test_metrics_is_documented_only_when_served() -> None:
    assert "/metrics" in build_spec()["paths"]
    assert "/metrics" not in build_spec(metrics=False)["paths"]


def test_admin_and_dashboard_are_documented_only_when_served() -> None:
    assert not {path for path, _ in {**ADMIN, **DASHBOARD}} & set(build_spec()["paths"])
    assert "securitySchemes" not in build_spec()["components"]
    for admin, dashboard in ((True, False), (False, True), (True, True)):
        spec = json.loads(orjson.dumps(build_spec(admin=admin, dashboard=dashboard)))
        expected = {**DOCUMENTED, **(ADMIN if admin else {}), **(DASHBOARD if dashboard else {})}
        assert_well_formed(spec, expected)
        schemes = spec["components"]["securitySchemes"]
        expected_schemes = {"adminToken"} if admin else set()
        expected_schemes |= {"dashboardToken"} if dashboard else set()
        assert set(schemes) == expected_schemes
        assert all(scheme["scheme"] == "bearer" for scheme in schemes.values())
    both = build_spec(BEARER, admin=True, dashboard=True)
    assert set(both["components"]["securitySchemes"]) == {"apiKey", "adminToken", "dashboardToken"}
    for (path, method), codes in {**ADMIN, **DASHBOARD}.items():
        operation = both["paths"][path][method]
        public = path == "/dashboard"
        scheme = "adminToken" if path.startswith("/admin") else "dashboardToken"
        assert operation["security"] == ([] if public else [{scheme: []}]), path
        assert ("401" in codes) != public
        if "401" in codes:
            assert "WWW-Authenticate" in operation["responses"]["401"]["headers"]
        if "503" in codes:
            assert "Retry-After" in operation["responses"]["503"]["headers"]
        if path.startswith("/dashboard"):  # nothing of the dashboard is cached
            for code, response in operation["responses"].items():
                assert ("Cache-Control" in response["headers"]) == (code != "413"), (path, code)
    page = both["paths"]["/dashboard"]["get"]["responses"]["200"]
    assert {"Content-Security-Policy", "X-Content-Type-Options"} <= set(page["headers"])
    assert set(page["content"]) == {"text/html"}


def test_the_summary_schema_is_the_dashboards_own() -> None:
    """One definition: the TypedDict the dashboard returns is what the document shows."""
    schemas = build_spec(dashboard=True)["components"]["schemas"]
    summary = schemas["Summary"]
    assert summary["additionalProperties"] is False
    assert summary["properties"]["queue"] == {"$ref": "#/components/schemas/QueueJson"}
    assert set(summary["required"]) == set(Summary.__annotations__)
    assert set(schemas["QueueJson"]["properties"]) == set(QueueJson.__annotations__)


def assert_well_formed(spec: dict[str, Any], documented: dict[Any, set[str]] = DOCUMENTED) -> None:
    assert spec["openapi"] == "3.1.0"
    assert spec["info"]["title"] and spec["info"]["version"]
    found = {}
    for path, item in spec["paths"].items():
        assert path.startswith("/")
        operations = {m: op for m, op in item.items() if m in METHODS}
        assert operations, path
        for method, operation in operations.items():
            assert operation["operationId"]
            responses = operation["responses"]
            assert responses, (path, method)
            for code, response in responses.items():
                assert code.isdigit() and len(code) == 3, code
                assert response["description"], (path, method, code)
            found[(path, method)] = set(responses)
            params = [*item.get("parameters", []), *operation.get("parameters", [])]
            in_path = {p["name"] for p in params if p["in"] == "path"}
            assert in_path == {seg[1:-1] for seg in path.split("/") if seg.startswith("{")}
    assert found == documented
    for ref in refs(spec):
        assert resolve(spec, ref) is not None, ref
    for schema in spec["components"]["schemas"].values():
        jsonschema_rs.meta.validate(schema)  # a valid JSON Schema 2020-12 (raises if not)


def test_every_header_is_documented() -> None:
    spec = build_spec()
    submit = spec["paths"]["/task"]["post"]["responses"]
    rate = {"X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"}
    rate |= {"RateLimit-Policy", "RateLimit", "X-Request-ID"}
    assert set(submit["200"]["headers"]) == rate | {"Idempotent-Replayed"}
    assert set(submit["429"]["headers"]) == rate | {"Retry-After"}
    assert "Retry-After" in submit["503"]["headers"]
    assert "Retry-After" in spec["paths"]["/ready"]["get"]["responses"]["503"]["headers"]
    params = spec["paths"]["/task"]["post"]["parameters"]
    assert [(p["name"], p["in"]) for p in params] == [
        ("Idempotency-Key", "header"),
        ("X-Request-ID", "header"),
    ]


def test_every_operation_takes_and_every_response_returns_a_request_id() -> None:
    spec = build_spec(BEARER)
    assert spec["components"]["headers"]["X-Request-ID"]["required"] is True
    count = 0
    for item in spec["paths"].values():
        for method, operation in item.items():
            if method not in METHODS:
                continue
            names = [p["name"] for p in operation["parameters"] if p["in"] == "header"]
            assert "X-Request-ID" in names
            for response in operation["responses"].values():
                assert "X-Request-ID" in response["headers"]
                count += 1
    assert count > 20


def test_the_request_schema_is_the_validating_models_own() -> None:
    spec = build_spec()
    assert spec["components"]["schemas"]["TaskRequest"] == TaskRequest.model_json_schema()
    body = spec["paths"]["/task"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/TaskRequest"}


def test_a_batch_item_is_the_request_schema_and_its_own_key() -> None:
    spec = build_spec(batch_limit=7)
    item = spec["components"]["schemas"]["BatchItem"]
    single = TaskRequest.model_json_schema()
    assert item["properties"] == {**single["properties"], "idempotency_key": ANY}
    tasks = spec["paths"]["/tasks"]["post"]["requestBody"]["content"]["application/json"]
    assert tasks["schema"]["properties"]["tasks"]["maxItems"] == 7


def test_the_server_serves_the_document_and_its_docs(live_server: tuple[str, Namespace]) -> None:
    url, _ = live_server
    served = httpx.get(f"{url}/openapi.json", timeout=10)
    assert served.status_code == 200
    assert served.headers["content-type"] == "application/json"
    assert served.json() == json.loads(orjson.dumps(build_spec()))
    docs = httpx.get(f"{url}/docs", timeout=10)
    assert docs.status_code == 200
    assert docs.headers["content-type"].startswith("text/html")
    assert "openapi.json" in docs.text


def test_the_docs_page_loads_nothing_from_elsewhere(live_server: tuple[str, Namespace]) -> None:
    """Every script and stylesheet of /docs comes from this server (none from a CDN), each
    is served with its content type, and the CSP allows no other origin."""
    url, _ = live_server
    docs = httpx.get(f"{url}/docs", timeout=10)
    sources = re.findall(r'<(?:script|link)[^>]*(?:src|href)="([^"]+)"', docs.text)
    assert sources, docs.text
    assert not re.search(r"(?:https?:)?//", docs.text), "an absolute URL in the page"
    csp = docs.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "http" not in csp and "unsafe-eval" not in csp
    for source in sources:
        asset = httpx.get(f"{url}/{source}", timeout=10)
        assert asset.status_code == 200, source
        kind = "text/css" if source.endswith(".css") else "text/javascript"
        assert asset.headers["content-type"].startswith(kind), source
        assert not re.search(rb"""(?:src|href)=["']https?://""", asset.content), source
    assert len(httpx.get(f"{url}/docs/swagger-ui-bundle.js", timeout=10).content) > 100_000
    missing = httpx.get(f"{url}/docs/../openapi.json.bak", timeout=10)
    assert missing.status_code == 404
    assert httpx.get(f"{url}/docs/secrets.txt", timeout=10).status_code == 404


CHECKS = [
    schemathesis.checks.not_a_server_error,
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_schema_conformance,
    schemathesis.checks.response_headers_conformance,
]
# Positive acceptance is left out: a schema-valid body may still name a task this
# config lacks (422), and the task names are config, not schema.
NEGATIVE_CHECKS = [*CHECKS, schemathesis.checks.negative_data_rejection]
# Bodies that break the schema must be refused with a 4xx; schemathesis's default list
# lacks 413, which is how a batch over server.batch_limit (the schema's maxItems) is
# refused: too much content, not malformed content.
REFUSALS = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429"]
NEGATIVE_CONFIG = SchemathesisConfig.from_dict(
    {"checks": {"negative_data_rejection": {"expected-statuses": [*REFUSALS, "5xx"]}}}
)


def test_the_live_server_keeps_to_its_document(live_server: tuple[str, Namespace]) -> None:
    """schemathesis, a few dozen cases per operation: no 5xx but the documented 503s,
    every status, header and body as documented; bodies that break the schema are 4xx.
    (Its pytest plugin does not run on pytest 9, so hypothesis drives each strategy.)"""
    url, _ = live_server
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", config=NEGATIVE_CONFIG)
    operations = [result.ok() for result in schema.get_all_operations()]
    labels = {op.label for op in operations}
    assert {"POST /task", "POST /tasks", "GET /task/{job_id}", "GET /ready"} <= labels
    runs = [(op, GenerationMode.POSITIVE, CHECKS) for op in operations]
    runs += [(op, GenerationMode.NEGATIVE, NEGATIVE_CHECKS) for op in operations if op.body]
    for operation, mode, checks in runs:
        keep_to_the_document(url, operation, mode, checks)


def test_a_server_with_api_keys_keeps_to_its_document(ns, redis_url, spawn, monkeypatch) -> None:
    """The protected operations, with no key (every answer a 401) and with a key."""
    key = "openapi-key-0123456789abcdef"
    monkeypatch.setenv("TASKHUB_KEY_OPENAPI", key)
    keys = [{"key": "${TASKHUB_KEY_OPENAPI}", "name": "openapi"}]
    url = spawn(config_dict(ns, redis_url, auth={"type": "api_key", "keys": keys}), "serve").url
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    protected = [op for op in operations if op.path.startswith("/task")]
    assert len(protected) == 4
    for operation in protected:
        for headers in ({}, {"Authorization": f"Bearer {key}"}):
            keep_to_the_document(url, operation, GenerationMode.POSITIVE, CHECKS, headers, 10)


def test_a_server_with_admin_and_dashboard_keeps_to_its_document(
    ns, redis_url, spawn, monkeypatch
) -> None:
    """The token-guarded operations with their token, and without it (every answer a 401)."""
    monkeypatch.setenv("TASKHUB_ADMIN_TOKEN", ADMIN_TOKEN)
    monkeypatch.setenv("TASKHUB_DASHBOARD_TOKEN", DASHBOARD_TOKEN)
    config = config_dict(
        ns,
        redis_url,
        dashboard={"enabled": True, "token": "${TASKHUB_DASHBOARD_TOKEN}"},
        limits={"admin": {"enabled": True, "token": "${TASKHUB_ADMIN_TOKEN}"}},
    )
    url = spawn(config, "serve").url
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    operations = {op.label: op for op in (r.ok() for r in schema.get_all_operations())}
    guarded = {
        label: op
        for label, op in operations.items()
        if op.path.startswith(("/admin", "/dashboard/"))
    }
    assert len(guarded) == 7
    keep_to_the_document(url, operations["GET /dashboard"], GenerationMode.POSITIVE, CHECKS, {}, 3)
    for label, operation in guarded.items():
        token = ADMIN_TOKEN if " /admin/" in label else DASHBOARD_TOKEN
        with_token = {"Authorization": f"Bearer {token}"}
        keep_to_the_document(url, operation, GenerationMode.POSITIVE, CHECKS, with_token, 15)
        keep_to_the_document(url, operation, GenerationMode.POSITIVE, CHECKS, {}, 5, anonymous=True)


def keep_to_the_document(
    url: str,
    operation: Any,
    mode: GenerationMode,
    checks: list,
    headers: dict[str, str] | None = None,
    examples: int = 25,
    anonymous: bool = False,
) -> None:
    """``examples`` cases of ``operation`` pass ``checks``; ``anonymous``: sent without the
    Authorization schemathesis makes up for a bearer scheme, each must be a 401."""

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def keeps_to_the_document(case: Any) -> None:
        if anonymous:
            case.headers.pop("Authorization", None)
        response = case.call_and_validate(base_url=url, checks=checks, headers=headers, timeout=10)
        assert not anonymous or response.status_code == 401, (case, response.text)

    keeps_to_the_document()


def test_job_bodies_match_their_models(live_server: tuple[str, Namespace]) -> None:
    """What schemathesis cannot reach with random ids: a real job's 200, 200 and 409."""
    url, _ = live_server
    submitted = httpx.post(f"{url}/task", json={"user_id": "openapi"}, timeout=10)
    job_id = Queued.model_validate(submitted.json()).job_id
    state = httpx.get(f"{url}/task/{job_id}", timeout=10)
    assert Job.model_validate(state.json()).status == "queued"
    aborted = httpx.delete(f"{url}/task/{job_id}", timeout=10)
    assert (aborted.status_code, Job.model_validate(aborted.json()).status) == (200, "aborted")
    again = httpx.delete(f"{url}/task/{job_id}", timeout=10)
    assert again.status_code == 409
    Conflict.model_validate(again.json())
