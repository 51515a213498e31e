"""OpenTelemetry tracing (``tracing:``, the otel extra) in this process: the spans of a
request, its admission, its job, the handler and the sink, in one trace, through
OpenTelemetry's in-memory exporter; an incoming ``traceparent``; the user id only when
asked; the config error without the SDK; and, off, OpenTelemetry not even imported.

Across a server and a separate worker process: test_tracing_processes.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from taskhub.asgi import TaskhubApp, create_app
from taskhub.monitoring import otel
from tests.support.configs import config_dict, write_config
from tests.support.namespaces import Namespace

INCOMING_TRACE = "0af7651916cd43dd8448eb211c80319c"
INCOMING_SPAN = "b7ad6b7169203331"
TRACEPARENT = f"00-{INCOMING_TRACE}-{INCOMING_SPAN}-01"

_EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module")
def provider() -> TracerProvider:
    """The application's SDK provider, set once for the process (OpenTelemetry allows one):
    taskhub joins a provider the application set rather than building its own."""
    current = trace.get_tracer_provider()
    if not isinstance(current, TracerProvider):
        current = TracerProvider()
        trace.set_tracer_provider(current)
    current.add_span_processor(SimpleSpanProcessor(_EXPORTER))
    return current


@pytest.fixture
def spans(provider: TracerProvider) -> Iterator[InMemorySpanExporter]:
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()


def memory_config(tmp_path: Path, **sections: Any) -> Path:
    sinks = [{"type": "file_log", "path": str(tmp_path / "task.log")}]
    return write_config(
        tmp_path, config_dict(Namespace.new(), "memory://", sinks=sinks, **sections)
    )


@pytest.fixture
async def traced_app(tmp_path: Path, spans: InMemorySpanExporter) -> AsyncIterator[TaskhubApp]:
    app = create_app(memory_config(tmp_path, tracing={"enabled": True}))
    try:
        yield app
    finally:
        await app.stop()


async def eventually(predicate: Any, timeout: float = 20) -> Any:
    """Poll ``predicate`` without blocking the loop (the worker runs in this one)."""
    deadline = time.monotonic() + timeout
    while not (result := predicate()) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return result


def client_of(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def submit(app: TaskhubApp, tmp_path: Path, headers: dict[str, str] | None = None) -> str:
    async with client_of(app) as client:
        response = await client.post("/task", json={"user_id": "alice"}, headers=headers)
        assert response.status_code == 200, response.text
    job_id: str = response.json()["job_id"]
    log = tmp_path / "task.log"
    assert await eventually(lambda: log.exists() and job_id in log.read_text())
    return job_id


async def by_name(spans: InMemorySpanExporter, job_id: str) -> dict[str, ReadableSpan]:
    """The finished spans of one job's trace, by name (waiting for the last, the job's)."""
    await eventually(
        lambda: any(s.name == "job log_completion" for s in spans.get_finished_spans())
    )
    found = {s.name: s for s in spans.get_finished_spans()}
    assert found["taskhub.admission"].attributes["taskhub.job_id"] == job_id, found
    return found


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


async def test_one_trace_covers_request_admission_job_handler_and_sink(
    traced_app: TaskhubApp, tmp_path: Path, spans: InMemorySpanExporter
) -> None:
    job_id = await submit(traced_app, tmp_path)
    found = await by_name(spans, job_id)
    request, admission = found["POST /task"], found["taskhub.admission"]
    job, handler, sink = (
        found["job log_completion"],
        found["handler log_completion"],
        found["sink file_log"],
    )
    trace_ids = {s.context.trace_id for s in (request, admission, job, handler, sink)}
    assert len(trace_ids) == 1, found
    assert request.parent is None  # no traceparent sent: a new trace
    assert parent_of(admission) == request.context.span_id
    assert parent_of(job) == admission.context.span_id  # through the job's stored traceparent
    assert parent_of(handler) == job.context.span_id
    assert parent_of(sink) == job.context.span_id
    assert request.attributes["http.response.status_code"] == 200
    assert request.attributes["http.route"] == "/task"
    assert admission.attributes["taskhub.outcome"] == "admitted"
    assert admission.attributes["taskhub.rule"] == "token_bucket"
    assert admission.attributes["taskhub.task"] == "log_completion"
    for span in (job, handler, sink):
        assert span.attributes["taskhub.job_id"] == job_id
        assert span.attributes["taskhub.task"] == "log_completion"
        assert span.attributes["taskhub.attempt"] == 1
    assert job.attributes["taskhub.outcome"] == "completed"
    assert sink.attributes["taskhub.sink"] == "file_log"
    # The user id may be personal data: absent unless tracing.include_user_id says so.
    assert not any("taskhub.user_id" in (s.attributes or {}) for s in found.values())


async def test_an_incoming_traceparent_is_the_request_spans_parent(
    traced_app: TaskhubApp, tmp_path: Path, spans: InMemorySpanExporter
) -> None:
    job_id = await submit(traced_app, tmp_path, {"traceparent": TRACEPARENT})
    found = await by_name(spans, job_id)
    request = found["POST /task"]
    assert parent_of(request) == int(INCOMING_SPAN, 16)
    assert request.parent is not None and request.parent.is_remote
    assert {s.context.trace_id for s in found.values()} == {int(INCOMING_TRACE, 16)}


async def test_the_user_id_is_on_the_spans_when_the_config_says_so(
    tmp_path: Path, spans: InMemorySpanExporter
) -> None:
    config = memory_config(tmp_path, tracing={"enabled": True, "include_user_id": True})
    app = create_app(config)
    try:
        job_id = await submit(app, tmp_path)
        found = await by_name(spans, job_id)
    finally:
        await app.stop()
    for name in ("taskhub.admission", "job log_completion", "handler log_completion"):
        assert found[name].attributes["taskhub.user_id"] == "alice", name


async def test_a_refusal_names_its_rule(tmp_path: Path, spans: InMemorySpanExporter) -> None:
    limiter = {"type": "token_bucket", "capacity": 1, "refill": 1, "period": 3600}
    app = create_app(memory_config(tmp_path, tracing={"enabled": True}, limiter=limiter))
    try:
        async with client_of(app) as client:
            statuses = [
                (await client.post("/task", json={"user_id": "bob"})).status_code for _ in "ab"
            ]
    finally:
        await app.stop()
    assert statuses == [200, 429]
    admissions = [s for s in spans.get_finished_spans() if s.name == "taskhub.admission"]
    refused = [s for s in admissions if s.attributes["taskhub.outcome"] == "refused"]
    assert len(refused) == 1, admissions
    assert refused[0].attributes["taskhub.rule"] == "token_bucket"
    requests = [s for s in spans.get_finished_spans() if s.name == "POST /task"]
    assert sorted(s.attributes["http.response.status_code"] for s in requests) == [200, 429]


async def test_a_batch_is_one_admission_span_whose_jobs_are_its_children(
    traced_app: TaskhubApp, tmp_path: Path, spans: InMemorySpanExporter
) -> None:
    body = {"tasks": [{"user_id": "alice"}, {"user_id": "bob"}]}
    async with client_of(traced_app) as client:
        response = await client.post("/tasks", json=body)
    assert response.status_code == 200, response.text
    job_ids = {r["job_id"] for r in response.json()["results"]}
    jobs = await eventually(lambda: len(named(spans, "job log_completion")) == 2)
    assert jobs, spans.get_finished_spans()
    (request,) = named(spans, "POST /tasks")
    (batch,) = [
        s for s in named(spans, "taskhub.admission") if "taskhub.batch.size" in s.attributes
    ]
    assert parent_of(batch) == request.context.span_id
    assert batch.attributes["taskhub.batch.size"] == 2
    assert batch.attributes["taskhub.batch.admitted"] == 2
    # The embedded store decides items one by one: each its own admission, in the batch's.
    items = [s for s in named(spans, "taskhub.admission") if parent_of(s) == batch.context.span_id]
    parents = {batch.context.span_id} | {s.context.span_id for s in items}
    for job in named(spans, "job log_completion"):
        assert parent_of(job) in parents
        assert job.attributes["taskhub.job_id"] in job_ids


def named(spans: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in spans.get_finished_spans() if s.name == name]


# ---------------------------------------------------------------- configuration


def run_cli(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "taskhub", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
        check=False,
    )


def test_on_without_the_sdk_is_a_config_error_naming_the_key_and_the_install(
    tmp_path: Path,
) -> None:
    """An ``opentelemetry`` package without the SDK shadows the installed one, as if the
    otel extra were missing: exit 2, the key and the pip command."""
    shadow = tmp_path / "shadow" / "opentelemetry"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("")
    config = memory_config(tmp_path, tracing={"enabled": True})
    result = run_cli(["check", str(config)], tmp_path, {"PYTHONPATH": str(shadow.parent)})
    assert result.returncode == 2, result.stderr
    assert "tracing.enabled" in result.stderr
    assert "pip install 'taskhub[otel]'" in result.stderr


def test_an_unknown_exporter_is_named_with_what_is_installed() -> None:
    with pytest.raises(Exception, match=r"OTEL_TRACES_EXPORTER=nope.*'nope'.*console"):
        list(otel.exporters({"OTEL_TRACES_EXPORTER": "nope"}))


def test_otlp_follows_the_protocol_variable() -> None:
    assert otel.exporter_name("otlp", {}) == "otlp_proto_http"
    assert otel.exporter_name("otlp", {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}) == "otlp_proto_grpc"
    with pytest.raises(Exception, match="http/json"):
        otel.exporter_name("otlp", {"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"})
    assert list(otel.exporters({"OTEL_TRACES_EXPORTER": "none"})) == []


def test_the_service_name_defaults_to_taskhub(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    assert otel.resource("server").attributes["service.name"] == "taskhub"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "jobs-api")
    found = otel.resource("worker").attributes
    assert (found["service.name"], found["taskhub.role"]) == ("jobs-api", "worker")


OFF_PROGRAM = textwrap.dedent(
    """
    import asyncio, pathlib, sys
    import httpx
    from taskhub.asgi import create_app

    async def main():
        app = create_app(sys.argv[1])
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            response = await client.post("/task", json={"user_id": "alice"})
            assert response.status_code == 200, response.text
        job_id = response.json()["job_id"]
        log = pathlib.Path(sys.argv[1]).parent / "task.log"
        for _ in range(400):
            if log.exists() and job_id in log.read_text():
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the job did not reach its sink")
        await app.stop()
        assert "taskhub.monitoring.otel" not in sys.modules

    asyncio.run(main())
    """
)


def loaded_opentelemetry(code: str, cwd: Path, *args: str) -> list[str]:
    """The opentelemetry modules a fresh interpreter has loaded after ``code``."""
    code += "\nimport json, sys\n"
    code += "print(json.dumps(sorted(m for m in sys.modules if m.startswith('opentelemetry'))))"
    result = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    loaded: list[str] = json.loads(result.stdout.splitlines()[-1])
    return loaded


def test_off_imports_no_opentelemetry_of_its_own(tmp_path: Path) -> None:
    """Off (the default), a submission that runs to its sink loads no OpenTelemetry module
    beyond those redis-py loads by itself (redis-py 7 imports the metrics SDK whenever it
    is installed): not taskhub's tracing, not the tracing SDK, no exporter."""
    config = memory_config(tmp_path)
    loaded = loaded_opentelemetry(OFF_PROGRAM, tmp_path, str(config))
    by_redis = loaded_opentelemetry("import redis.asyncio", tmp_path)
    assert set(loaded) == set(by_redis)
    assert "opentelemetry.sdk.trace" not in loaded
    assert "opentelemetry.propagate" not in loaded


async def test_off_makes_no_spans(tmp_path: Path, spans: InMemorySpanExporter) -> None:
    app = create_app(memory_config(tmp_path))
    try:
        await submit(app, tmp_path)
    finally:
        await app.stop()
    assert spans.get_finished_spans() == ()
