"""What the client raises: one exception per kind of answer, carrying the server's fields.

Every one is a :class:`ClientError`, so ``except ClientError`` catches all of them;
each keeps the HTTP status, the body's stable ``code`` and ``message``, and the
request's ``X-Request-ID`` (the id to look for in the server's logs).
"""

from __future__ import annotations

from typing import Any

from taskhub.web.models import FieldProblem, Job


class ClientError(Exception):
    """Anything the client could not do; ``status`` is None when no answer came."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        request_id: str | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.request_id = request_id
        self.body = body


class RateLimited(ClientError):
    """429: a rate-limit rule refused; nothing was queued. Retry in ``retry_after`` s."""

    def __init__(
        self, message: str, *, retry_after: int, policy: str, refused_by: list[str], **kw: Any
    ) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after
        self.policy = policy
        self.refused_by = refused_by


class Invalid(ClientError):
    """400, 413, 415 or 422: the request must change; ``problems`` names each bad field."""

    def __init__(self, message: str, *, problems: list[FieldProblem], **kw: Any) -> None:
        super().__init__(message, **kw)
        self.problems = problems


class Unauthorized(ClientError):
    """401: no API key, or one the server does not know."""


class Forbidden(Unauthorized):
    """403: the credential (an API key, say) is bound to another user."""


class NotFound(ClientError):
    """404: no such job (or it expired, or it is another user's)."""


class Conflict(ClientError):
    """409 from :meth:`cancel`: the job had already finished; ``job`` is its state."""

    def __init__(self, message: str, *, job: Job, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.job = job


class Unavailable(ClientError):
    """503 (Redis unreachable, queue full), or no answer at all (connection refused or
    dropped, timeout). ``retry_after`` is the server's hint in seconds, when it gave one.

    ``idempotency_key`` is the key of the submission that got no answer: submitting
    again with it returns the same job if the first attempt was stored.
    """

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        idempotency_key: str | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after
        self.idempotency_key = idempotency_key


class NotSupported(ClientError):
    """The server has no such endpoint (an older taskhub): ``POST /tasks``, say."""


class UnexpectedResponse(ClientError):
    """An answer the API does not give for this call (a 500, or a body that is not its own)."""
