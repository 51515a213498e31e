"""OpenTelemetry spans for a request, its admission, its job, the handler and each sink.

Imported only when ``tracing.enabled`` is on (see :mod:`taskhub.monitoring.tracing`).
The provider is OpenTelemetry's standard one, configured the standard way: the
resource from ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES``, the sampler
from ``OTEL_TRACES_SAMPLER``, the batching from ``OTEL_BSP_*``, the exporters named
by ``OTEL_TRACES_EXPORTER`` (entry points of ``opentelemetry_traces_exporter``, as
the SDK's own configurator finds them) with their own ``OTEL_EXPORTER_OTLP_*``. An
application that already set an SDK tracer provider (taskhub mounted in an app that
configures OpenTelemetry itself) keeps it: taskhub's spans join it.

A job's span is a child of its admission's, across processes and time, through the
W3C ``traceparent`` the admission leaves in :data:`trace_context.traceparent` for the
queue to store in the job.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from importlib.metadata import entry_points
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from taskhub.config.models import TracingSettings
from taskhub.errors import BackendUnavailable, UsageError
from taskhub.http import Headers
from taskhub.jobs import Task, TaskSpec
from taskhub.limits.admission import Admission, Ask, Decision
from taskhub.limits.policy import RequestContext
from taskhub.monitoring import trace_context
from taskhub.version import __version__

logger = logging.getLogger(__name__)

Admit = Callable[..., Awaitable[Decision]]  # Admission.admit
AdmitMany = Callable[[Sequence[Ask]], Awaitable[list[Decision | Exception]]]

EXPORTER_GROUP = "opentelemetry_traces_exporter"
# OTEL_EXPORTER_OTLP_PROTOCOL's values, as the SDK's configurator maps them; the
# spec's default is http/protobuf, the exporter the otel extra installs.
OTLP_BY_PROTOCOL = {"http/protobuf": "otlp_proto_http", "grpc": "otlp_proto_grpc"}
OTLP_PACKAGES = {
    "otlp_proto_http": "opentelemetry-exporter-otlp-proto-http",
    "otlp_proto_grpc": "opentelemetry-exporter-otlp-proto-grpc",
}
FLUSH_TIMEOUT_MS = 5_000
# Outcomes of an attempt that are failures, though the job may run again.
FAILED = frozenset({"failed", "dead"})

_W3C = TraceContextTextMapPropagator()


class _HeaderGetter(Getter[Headers]):
    """Reads propagation headers (``traceparent``, ``tracestate``) from a request."""

    def get(self, carrier: Headers, key: str) -> list[str] | None:
        value = carrier.get(key.lower())
        return None if value is None else [value]

    def keys(self, carrier: Headers) -> list[str]:
        return []  # the propagators taskhub needs ask by name


_HEADERS = _HeaderGetter()


class Tracer:
    """Makes taskhub's spans; one per process, from :func:`start`."""

    def __init__(
        self, provider: trace.TracerProvider, settings: TracingSettings, *, owned: bool
    ) -> None:
        self.provider = provider
        self.include_user_id = settings.include_user_id
        self.owned = owned  # built here from the environment: flushed at stop
        self._tracer = provider.get_tracer("taskhub", __version__)

    # ---------------------------------------------------------------- server side

    def request(
        self, method: str, route: str | None, path: str, headers: Headers
    ) -> AbstractContextManager[Span]:
        """The HTTP request's span, a child of the caller's ``traceparent`` if it sent one."""
        attributes: dict[str, Any] = {"http.request.method": method, "url.path": path}
        if route is not None:
            attributes["http.route"] = route
        return self._tracer.start_as_current_span(
            f"{method} {route}" if route is not None else method,
            context=propagate.extract(headers, getter=_HEADERS),
            kind=SpanKind.SERVER,
            attributes=attributes,
        )

    @staticmethod
    def responded(span: Span, status: int, request_id: str | None) -> None:
        span.set_attribute("http.response.status_code", status)
        if request_id is not None:
            span.set_attribute("taskhub.request_id", request_id)
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR))

    def instrument(self, admission: Admission) -> None:
        """Trace ``admission``'s calls, by shadowing its methods on the instance: the
        endpoints call them as ever, and an admission left alone pays nothing."""
        admission.admit = self.admission(admission.admit)  # type: ignore[method-assign,assignment]
        admission.admit_many = self.batch(admission.admit_many)  # type: ignore[method-assign,assignment]

    def admission(self, admit: Admit) -> Admit:
        """``admit`` in a span with its outcome and deciding rule; the job it queues
        carries the span's ``traceparent``."""

        async def traced(
            spec: TaskSpec, request: RequestContext, payload: Any, **options: Any
        ) -> Decision:
            attributes: dict[str, Any] = {"taskhub.task": spec.name}
            if self.include_user_id:
                attributes["taskhub.user_id"] = request.user_id
            with self._tracer.start_as_current_span(
                "taskhub.admission", kind=SpanKind.PRODUCER, attributes=attributes
            ) as span:
                token = trace_context.traceparent.set(traceparent(span))
                try:
                    decision = await admit(spec, request, payload, **options)
                except BackendUnavailable:
                    span.set_attribute("taskhub.outcome", "unavailable")
                    raise
                finally:
                    trace_context.traceparent.reset(token)
                decided(span, decision)
                return decision

        return traced

    def batch(self, admit_many: AdmitMany) -> AdmitMany:
        """A batch's admissions (``POST /tasks``) in one span: its size and the count of
        each outcome; each job it queues carries the span's ``traceparent``."""

        async def traced(asks: Sequence[Ask]) -> list[Decision | Exception]:
            with self._tracer.start_as_current_span(
                "taskhub.admission",
                kind=SpanKind.PRODUCER,
                attributes={"taskhub.batch.size": len(asks)},
            ) as span:
                token = trace_context.traceparent.set(traceparent(span))
                try:
                    outcomes = await admit_many(asks)
                finally:
                    trace_context.traceparent.reset(token)
                counts = Counter(
                    o.outcome.name.lower() if isinstance(o, Decision) else "error" for o in outcomes
                )
                for outcome, count in counts.items():
                    span.set_attribute(f"taskhub.batch.{outcome}", count)
                return outcomes

        return traced

    # ---------------------------------------------------------------- worker side

    def job(
        self, task: str, job_id: str, attempt: int, user_id: str, parent: str | None
    ) -> AbstractContextManager[Span]:
        """One attempt at a job, a child of its admission's span (``parent``, from the job)."""
        context = _W3C.extract({trace_context.TRACEPARENT: parent}) if parent else None
        attributes = self._job_attributes(task, job_id, attempt, user_id)
        return self._tracer.start_as_current_span(
            f"job {task}", context=context, kind=SpanKind.CONSUMER, attributes=attributes
        )

    @staticmethod
    def outcome(outcome: str) -> None:
        """The current job span's outcome (the worker's counters' names); a failed
        attempt marks it an error, even when the job will run again."""
        span = trace.get_current_span()
        span.set_attribute("taskhub.outcome", outcome)
        if outcome in FAILED:
            span.set_status(Status(StatusCode.ERROR, outcome))

    def handler(self, task: Task) -> AbstractContextManager[Span]:
        return self._tracer.start_as_current_span(
            f"handler {task.name}",
            attributes=self._job_attributes(task.name, task.job_id, task.attempt, task.user_id),
        )

    def sink(self, sink: str, call: str, task: Task) -> AbstractContextManager[Span]:
        """One sink's ``emit`` (a completion) or ``failed`` (a dead letter)."""
        attributes = self._job_attributes(task.name, task.job_id, task.attempt, task.user_id)
        attributes["taskhub.sink"] = sink
        attributes["taskhub.sink.call"] = call
        return self._tracer.start_as_current_span(
            f"sink {sink}", kind=SpanKind.CLIENT, attributes=attributes
        )

    def _job_attributes(self, task: str, job_id: str, attempt: int, user_id: str) -> dict[str, Any]:
        attributes: dict[str, Any] = {
            "taskhub.task": task,
            "taskhub.job_id": job_id,
            "taskhub.attempt": attempt,
        }
        if self.include_user_id:
            attributes["taskhub.user_id"] = user_id
        return attributes

    def shutdown(self) -> None:
        """Export what the batch processors hold: a stopping process's last spans too."""
        if self.owned and isinstance(self.provider, TracerProvider):
            self.provider.force_flush(FLUSH_TIMEOUT_MS)


def decided(span: Span, decision: Decision) -> None:
    span.set_attribute("taskhub.outcome", decision.outcome.name.lower())
    if decision.job_id:
        span.set_attribute("taskhub.job_id", decision.job_id)
    if decision.deciding is not None:
        span.set_attribute("taskhub.rule", decision.deciding.name)
    if decision.cached:
        span.set_attribute("taskhub.deny_cache", True)
    if decision.degraded:
        span.set_attribute("taskhub.degraded", True)


def traceparent(span: Span) -> str | None:
    """The W3C ``traceparent`` that makes a span the parent of another, elsewhere."""
    context = span.get_span_context()
    if not context.is_valid:
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def start(settings: TracingSettings, role: str) -> Tracer:
    """The process's tracer: on the application's SDK provider if it set one, else on
    one built from the ``OTEL_*`` environment and made the global one (so handlers'
    own spans, made with OpenTelemetry's API, nest under taskhub's)."""
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        return Tracer(current, settings, owned=current is _built.get("provider"))
    chosen = list(exporters(os.environ))  # a wrong name fails before anything is set
    provider = TracerProvider(resource=resource(role))
    for exporter in chosen:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _built["provider"] = provider
    return Tracer(provider, settings, owned=True)


_built: dict[str, TracerProvider] = {}  # the provider this module made, once per process


def resource(role: str) -> Resource:
    """The environment's resource; ``service.name`` taskhub unless it names one."""
    found = Resource.create({"taskhub.role": role})
    name = str(found.attributes.get(SERVICE_NAME, ""))
    if name.startswith("unknown_service"):
        found = found.merge(Resource({SERVICE_NAME: "taskhub"}))
    return found


def exporters(env: Mapping[str, str]) -> Iterator[SpanExporter]:
    """``OTEL_TRACES_EXPORTER``'s exporters (default ``otlp``; ``none``: none)."""
    names = env.get("OTEL_TRACES_EXPORTER", "").strip() or "otlp"
    if names.lower() == "none":
        return
    for given in names.split(","):
        name = exporter_name(given.strip(), env)
        found = entry_points(group=EXPORTER_GROUP, name=name)
        if not found:
            package = OTLP_PACKAGES.get(name)
            installed = sorted(ep.name for ep in entry_points(group=EXPORTER_GROUP))
            hint = f"pip install {package}" if package else f"installed: {', '.join(installed)}"
            raise UsageError(
                f"OTEL_TRACES_EXPORTER={names}: no trace exporter {name!r} is installed ({hint})"
            )
        exporter = next(iter(found)).load()()
        logger.debug("tracing: exporting spans with %s", type(exporter).__name__)
        yield exporter


def exporter_name(name: str, env: Mapping[str, str]) -> str:
    """``otlp`` is the exporter of ``OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL``."""
    if name != "otlp":
        return name
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    if protocol not in OTLP_BY_PROTOCOL:
        choices = ", ".join(OTLP_BY_PROTOCOL)
        raise UsageError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol}: taskhub's OTLP exporters speak {choices}"
        )
    return OTLP_BY_PROTOCOL[protocol]
