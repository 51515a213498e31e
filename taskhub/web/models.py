"""The bodies of the HTTP API's answers, as pydantic models: their one definition.

The server writes these bodies as plain dicts (building them through pydantic
would cost the hot path); the OpenAPI document is made from these models, and
the schemathesis test checks live answers against it, so the two cannot drift.
:class:`FieldProblem` is also what validation errors are built from.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from taskhub.jobs import MAX_WEIGHT, JobStatus


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Queued(_Body):
    """200 from ``POST /task``: the job is stored."""

    status: Literal["queued"]
    job_id: str
    task: str
    replayed: bool = Field(
        False,
        description="true, and present, only when an Idempotency-Key named an existing job",
    )


class FieldProblem(_Body):
    field: str = Field(description='dotted path of the field, e.g. "payload.count"')
    message: str


class Error(_Body):
    """Every error: a code for programs, a sentence for people."""

    error: str = Field(description="a stable code, e.g. invalid_json, queue_full, not_found")
    message: str
    problems: list[FieldProblem] = Field(
        default_factory=list, description="422 only: one entry per invalid field"
    )


class RateLimited(_Body):
    """429: a rate-limit rule refused."""

    error: Literal["rate_limited"]
    message: str
    policy: str = Field(description="the refusing rule with the longest wait")
    refused_by: list[str] = Field(description="every refusing rule")
    retry_after: int = Field(ge=1, description="seconds, as in Retry-After")


class Job(_Body):
    """A job's state (``GET /task/{job_id}``). Times are ISO-8601 UTC with milliseconds."""

    job_id: str
    task: str
    user_id: str
    status: JobStatus
    attempts: int = Field(ge=0)
    max_attempts: int = Field(ge=0)
    queued_at: str | None
    # Optional: servers before delayed jobs do not send it, and clients read their answers.
    run_at: str | None = Field(
        None, description="a delayed job's run time, while its status is scheduled"
    )
    retry_at: str | None
    started_at: str | None
    completed_at: str | None
    result: Any = Field(description="what the handler returned")
    error: str | None = Field(description="the last failure's traceback")


class Conflict(_Body):
    """409 from ``DELETE /task/{job_id}``: the job had already finished."""

    error: Literal["conflict"]
    message: str
    job: Job


class Health(_Body):
    status: Literal["ok"]


Check = Literal["ok", "unavailable", "timeout"]


class Ready(_Body):
    status: Literal["ready"]
    checks: dict[str, Check] = Field(description="each dependency checked: redis, queue, ...")


class NotReady(_Body):
    status: Literal["not_ready"]
    reason: str = Field(description='the failed checks, e.g. "redis: unavailable"')
    checks: dict[str, Check]


class Requeued(_Body):
    """200 from the dashboard's retry: the dead letter is queued again."""

    status: Literal["queued"]
    job_id: str


class Weight(_Body):
    """A user's weight under fair scheduling (``/admin/weights/{user_id}``)."""

    user_id: str
    weight: int = Field(
        ge=1, le=MAX_WEIGHT, description="jobs the user takes per turn (queue.fairness user)"
    )


class WeightRequest(BaseModel):
    """The body of ``PUT /admin/weights/{user_id}``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    weight: int = Field(ge=1, le=MAX_WEIGHT, description="jobs the user takes per turn")


# ``POST /tasks``: one result per item, in the order of the items.


class BatchQueued(Queued):
    """The item's job is stored (or, replayed, was already)."""


class BatchRateLimited(_Body):
    """A rate-limit rule refused the item: nothing charged or queued for it."""

    status: Literal["rate_limited"]
    error: Literal["rate_limited"]
    message: str
    policy: str = Field(description="the refusing rule with the longest wait")
    refused_by: list[str] = Field(description="every refusing rule")
    retry_after: int = Field(ge=1, description="seconds until this item could pass")


class BatchRefused(_Body):
    """The item was not decided or not queued: nothing charged or queued for it.

    ``invalid``: its problems, as a single ``POST /task`` would get them in a 422
    (``error`` is ``invalid_request``, ``invalid_body``, ``invalid_idempotency_key``,
    or ``forbidden`` for a user the API key may not submit for). ``queue_full``:
    the queue is at ``queue.max_depth``. ``unavailable``: its Redis (a cluster
    node) could not be reached while the others could.
    """

    status: Literal["invalid", "queue_full", "unavailable"]
    error: str = Field(description="the code a single POST /task would answer with")
    message: str
    problems: list[FieldProblem] = Field(
        default_factory=list, description="invalid only: one entry per invalid field"
    )
    retry_after: int = Field(
        1, ge=1, description="queue_full and unavailable only: seconds to wait"
    )


class BatchResults(_Body):
    """200 from ``POST /tasks``: one result per item, in the order of the items."""

    results: list[BatchQueued | BatchRateLimited | BatchRefused]
