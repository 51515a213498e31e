"""The trace context a job carries from its admission to its worker (no OpenTelemetry here).

The traced admission sets :data:`traceparent` while it runs; the queue's ``prepare``
stores it in the job under :data:`TRACEPARENT`, and the worker's span for the job
becomes its child, in another process and minutes later. Off, it stays None.
"""

from __future__ import annotations

from contextvars import ContextVar

# The job meta key (and header name) that carries the submission's W3C trace context.
TRACEPARENT = "traceparent"

traceparent: ContextVar[str | None] = ContextVar("taskhub_traceparent", default=None)
