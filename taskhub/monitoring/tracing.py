"""Tracing's switch: what every process reads, without importing OpenTelemetry.

With ``tracing.enabled`` off (the default) nothing here imports OpenTelemetry and
the request path does no tracing work: the traced variants of the HTTP API, the
admission call and the task runner are put in place only by :func:`start`, which
imports :mod:`taskhub.monitoring.otel` (the ``otel`` extra) and sets :data:`active`.
A queue plugin reads :data:`active` once, when its worker starts.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from taskhub.config.models import TracingSettings
    from taskhub.monitoring.otel import Tracer

INSTALL = "pip install 'taskhub[otel]'"

active: Tracer | None = None  # this process's tracer, while tracing is on


def missing() -> str | None:
    """What to install when tracing is on without the SDK; None when it is there."""
    try:
        found = importlib.util.find_spec("opentelemetry.sdk.trace") is not None
    except ModuleNotFoundError:  # no opentelemetry package at all
        found = False
    if found:
        return None
    return f"tracing is on but the OpenTelemetry SDK is not installed: {INSTALL}"


def start(settings: TracingSettings, role: str) -> Tracer:
    """This process's tracer, configured from the ``OTEL_*`` environment; see
    :func:`taskhub.monitoring.otel.start`."""
    from taskhub.monitoring import otel  # noqa: PLC0415 (only when tracing is on)

    global active  # noqa: PLW0603 (one tracer per process, as OpenTelemetry's own)
    active = otel.start(settings, role)
    return active


def stop() -> None:
    """Export what is buffered and forget the tracer (at the end of the process's run)."""
    global active
    tracer, active = active, None
    if tracer is not None:
        tracer.shutdown()
