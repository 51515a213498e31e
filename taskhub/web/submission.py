"""Validate a task submission (the body of ``POST /task``) before anything touches Redis.

The pydantic model here is the single source of truth for what a request may
contain; servers use it to validate and, later, to describe the API.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from taskhub.jobs import MAX_PRIORITY, MIN_PRIORITY, TaskSpec, UserId
from taskhub.web.models import FieldProblem

RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})", re.ASCII
)
IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")


class TaskRequest(BaseModel):
    """``{"user_id": "...", "task": "...", "payload": {...}}``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    user_id: UserId
    task: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    payload: dict[str, Any] | None = None
    priority: (
        Annotated[
            int,
            Field(
                ge=MIN_PRIORITY,
                le=MAX_PRIORITY,
                description="higher runs first among this user's jobs (with queue.fairness "
                "none: among all jobs); default: the task's priority, else 0",
            ),
        ]
        | None
    ) = None
    delay: (
        Annotated[
            float,
            Field(
                gt=0,
                allow_inf_nan=False,
                description="seconds before the job may run, at most queue.max_delay; "
                "not with run_at",
            ),
        ]
        | None
    ) = None
    run_at: (
        Annotated[
            str,
            Field(
                max_length=64,
                description="RFC 3339 time with an offset before which the job does not run, "
                "at most queue.max_delay ahead (a past time: at once); not with delay",
                json_schema_extra={"format": "date-time"},
            ),
        ]
        | None
    ) = None


@dataclass
class SubmissionError(Exception):
    """A request the client must fix. ``status`` is 400 (unreadable) or 422 (invalid)."""

    status: int
    code: str
    message: str
    problems: list[FieldProblem] = field(default_factory=list)

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.code, "message": self.message}
        if self.problems:
            body["problems"] = [{"field": p.field, "message": p.message} for p in self.problems]
        return body


@dataclass(frozen=True, slots=True)
class Submission:
    spec: TaskSpec
    user_id: str
    payload: Any
    priority: int | None = None  # None: the task's default
    run_at: float | None = None  # epoch seconds; None: at once


class SubmissionParser:
    """Turns raw request bytes into a Submission for one of the configured tasks."""

    def __init__(
        self, tasks: Mapping[str, TaskSpec], default_task: str, max_delay: float = 0
    ) -> None:
        self.tasks = tasks
        self.default_task = default_task
        self.max_delay = max_delay  # the queue's: 0 takes no delays

    def parse(self, body: bytes) -> Submission:
        try:
            request = TaskRequest.model_validate_json(body)
        except ValidationError as exc:
            raise request_error(exc) from None
        name = request.task or self.default_task
        spec = self.tasks.get(name)
        if spec is None:
            choices = ", ".join(sorted(self.tasks))
            raise _invalid(
                [
                    FieldProblem(
                        field="task", message=f"unknown task {name!r}; choose one of: {choices}"
                    )
                ]
            )
        payload: Any = request.payload
        model = spec.handler.Payload
        if model is not None:
            try:
                model.model_validate(payload or {})
            except ValidationError as exc:
                raise _invalid(_field_problems(exc, prefix="payload")) from None
        run_at = None
        if request.delay is not None or request.run_at is not None:
            run_at = self.run_at(request.delay, request.run_at)
        return Submission(spec, request.user_id, payload, request.priority, run_at)

    def run_at(self, delay: float | None, run_at: str | None) -> float | None:
        """When a delayed job may run (epoch s; None: at once), or the 422 naming the field."""
        name = "delay" if run_at is None else "run_at"
        if delay is not None and run_at is not None:
            raise _invalid([FieldProblem(field="run_at", message="give delay or run_at, not both")])
        if self.max_delay <= 0:
            raise _invalid([FieldProblem(field=name, message="this queue takes no delayed jobs")])
        now = time.time()
        if run_at is not None:
            moment = rfc3339(run_at)
            if moment is None:
                message = "must be an RFC 3339 timestamp with an offset, e.g. 2026-12-08T09:30:00Z"
                raise _invalid([FieldProblem(field="run_at", message=message)])
            delay = moment - now
            if delay <= 0:
                return None  # its time has come: at once
        assert delay is not None
        if delay > self.max_delay:
            message = f"must be at most {self.max_delay:g} s ahead (queue.max_delay)"
            raise _invalid([FieldProblem(field=name, message=message)])
        return now + delay


def rfc3339(text: str) -> float | None:
    """Epoch seconds of an RFC 3339 date-time with its offset; None if it is not one."""
    if not RFC3339.fullmatch(text):
        return None
    try:
        return datetime.fromisoformat(text.upper().replace(" ", "T")).timestamp()
    except ValueError:  # e.g. a 31st of February
        return None


def request_error(exc: ValidationError) -> SubmissionError:
    """400 for a body that is not JSON or not an object, else a 422 naming each field."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    if first["type"] == "json_invalid":
        detail = first.get("ctx", {}).get("error", first["msg"])
        return SubmissionError(400, "invalid_json", f"body is not valid JSON: {detail}")
    if not first["loc"]:
        return SubmissionError(400, "invalid_body", "body must be a JSON object")
    return _invalid(_field_problems(exc))


def unstorable_payload(reason: str) -> SubmissionError:
    """A 422 for a payload that is valid JSON but that the queue cannot store.

    Queues raise it from ``prepare``, so the check costs nothing on the usual path.
    """
    message = reason[:1].lower() + reason[1:]
    return _invalid([FieldProblem(field="payload", message=f"cannot be stored: {message}")])


def _invalid(problems: list[FieldProblem]) -> SubmissionError:
    summary = "; ".join(f"{p.field}: {p.message}" for p in problems)
    return SubmissionError(422, "invalid_request", summary, problems)


def _field_problems(exc: ValidationError, prefix: str = "") -> list[FieldProblem]:
    problems = []
    for error in exc.errors(include_url=False):
        parts = [prefix] if prefix else []
        parts += [str(p) for p in error["loc"]]
        name = ".".join(parts) or prefix or "body"
        if error["type"] == "missing":
            message = "required"
        elif error["type"] == "extra_forbidden":
            message = "unknown field"
        else:
            message = error["msg"][:1].lower() + error["msg"][1:]
            message = message.removeprefix("value error, ")
        problems.append(FieldProblem(field=name, message=message))
    return problems


def idempotent_job_id(user_id: str, key: str | None) -> str | None:
    """The job id an ``Idempotency-Key`` stands for: the same for a retry, per user.

    Scoped to the user, so one client cannot collide with (or probe) another's keys.
    """
    if key is None:
        return None
    if not IDEMPOTENCY_KEY.match(key):
        raise SubmissionError(
            400,
            "invalid_idempotency_key",
            "Idempotency-Key must be 1 to 255 visible ASCII characters",
        )
    digest = hashlib.sha256(f"{user_id}\x00{key}".encode()).hexdigest()
    return digest[:32]
