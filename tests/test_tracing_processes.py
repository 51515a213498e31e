"""One trace across processes: ``taskhub serve`` admits a task, a separate ``taskhub worker``
runs it minutes (here: moments) later, and the spans both export over OTLP/HTTP, configured
only through the standard ``OTEL_*`` variables, form one trace: request, admission, job,
handler, sink. On a single Redis and on a Redis Cluster.

In this process, with OpenTelemetry's in-memory exporter: test_tracing.py.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.support.configs import config_dict, write_config
from tests.support.namespaces import Namespace
from tests.support.otlp_collector import Collector
from tests.support.processes import TaskhubProcess, wait_until

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


@pytest.fixture
def collector() -> Iterator[Collector]:
    started = Collector().start()
    yield started
    started.stop()


@pytest.fixture(params=["single", "cluster", "single-fair"])
def store(request: pytest.FixtureRequest) -> Iterator[tuple[str, bool, str]]:
    """(url, cluster?, queue.fairness): the shared Redis, or the session's test cluster;
    jobs in a plain queue, or taken in turn by user (the job's meta travels either way)."""
    if request.param == "cluster":
        yield request.getfixturevalue("cluster").url, True, "none"
    else:
        fairness = "user" if request.param.endswith("fair") else "none"
        yield request.getfixturevalue("redis_url"), False, fairness


@pytest.mark.redis
def test_one_trace_from_the_request_to_the_sink_across_server_and_worker(
    tmp_path: Path, collector: Collector, store: tuple[str, bool, str]
) -> None:
    url, cluster, fairness = store
    ns = Namespace.new()
    config = config_dict(ns, url, tracing={"enabled": True})
    config["redis"]["cluster"] = cluster
    config["queue"]["fairness"] = fairness
    config["sinks"] = [{"type": "file_log", "path": str(tmp_path / "task.log")}]
    path = write_config(tmp_path, config)
    env = {
        "OTEL_SERVICE_NAME": "taskhub-test",
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # export within 0.1 s rather than 5 s
    }
    server = TaskhubProcess(["serve", str(path)], cwd=tmp_path, env=env)
    worker = TaskhubProcess(["worker", str(path)], cwd=tmp_path, env=env)
    client = redis.Redis.from_url(url) if not cluster else None
    try:
        server.start()
        worker.start(wait_for="started (worker)")
        traceparent = f"00-{TRACE}-{PARENT}-01"
        response = httpx.post(
            f"{server.url}/task",
            json={"user_id": "alice"},
            headers={"traceparent": traceparent},
            timeout=10,
        )
        assert response.status_code == 200, (response.text, server.output)
        job_id = response.json()["job_id"]
        batch = [{"user_id": "bob"}, {"user_id": "carol"}]
        answer = httpx.post(f"{server.url}/tasks", json={"tasks": batch}, timeout=10)
        assert answer.status_code == 200, (answer.text, server.output)
        assert wait_until(lambda: len(collector.named("sink file_log")) == 3, 30), worker.output
        assert wait_until(lambda: collector.named("POST /tasks"), 30), server.output
    finally:
        server.stop()
        worker.stop()
        if client is not None:
            ns.cleanup(client)
            client.close()
    if dump := os.environ.get("TASKHUB_TRACE_DUMP"):  # docs/tracing.md's picture
        Path(dump).write_text(json.dumps([s.as_json() for s in collector.spans], indent=1))
    (request,) = collector.named("POST /task")
    in_trace = [s for s in collector.spans if s.trace_id == TRACE]
    (admission,) = [s for s in in_trace if s.name == "taskhub.admission"]
    (job,) = [s for s in in_trace if s.name == "job log_completion"]
    (handler,) = [s for s in in_trace if s.name == "handler log_completion"]
    (sink,) = [s for s in in_trace if s.name == "sink file_log"]
    assert {s.trace_id for s in (request, admission, job, handler, sink)} == {TRACE}
    assert request.parent_span_id == PARENT  # the caller's traceparent, honoured
    assert admission.parent_span_id == request.span_id
    assert job.parent_span_id == admission.span_id  # across processes, through the job
    assert handler.parent_span_id == job.span_id
    assert sink.parent_span_id == job.span_id
    # Two processes, each named by the standard variable and its role.
    assert request.resource["service.name"] == job.resource["service.name"] == "taskhub-test"
    assert (request.resource["taskhub.role"], job.resource["taskhub.role"]) == ("server", "worker")
    assert admission.attributes["taskhub.outcome"] == "admitted"
    assert admission.attributes["taskhub.job_id"] == job_id
    assert job.attributes["taskhub.outcome"] == "completed"
    assert job.attributes["taskhub.attempt"] == 1
    assert all("taskhub.user_id" not in s.attributes for s in collector.spans)
    # A batch's admissions leave in one pipelined write: one span, both jobs its children.
    (batched,) = collector.named("POST /tasks")
    (decided,) = [s for s in collector.named("taskhub.admission") if s.trace_id == batched.trace_id]
    assert decided.parent_span_id == batched.span_id
    assert decided.attributes["taskhub.batch.admitted"] == 2
    jobs = [s for s in collector.named("job log_completion") if s.trace_id == batched.trace_id]
    assert [s.parent_span_id for s in jobs] == [decided.span_id] * 2
