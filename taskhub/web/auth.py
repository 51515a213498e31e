"""Authentication of the task endpoints: the configured authenticator, bound once.

With ``auth: {type: none}`` (or any authenticator whose ``enabled`` is False)
:func:`request_auth` returns None and the handlers skip authentication: the
request path then does nothing for it.
"""

from __future__ import annotations

from collections.abc import Callable

from taskhub.components import Authenticator, Principal, Unauthenticated
from taskhub.http import HttpRequest, HttpResponse
from taskhub.web.responses import error_response

RequestAuth = Callable[[HttpRequest], Principal | HttpResponse]


def request_auth(authenticator: Authenticator) -> RequestAuth | None:
    """A function from a request to its principal or to the 401 that refuses it."""
    if not authenticator.enabled:
        return None
    authenticate = authenticator.authenticate
    challenge = {"WWW-Authenticate": authenticator.challenge}

    def authenticated(request: HttpRequest) -> Principal | HttpResponse:
        try:
            return authenticate(request.headers)
        except Unauthenticated as exc:
            return error_response(401, "unauthorized", exc.message, challenge)

    return authenticated


def not_yours(bound: str, user_id: str) -> str:
    """Why a credential bound to ``bound`` may not submit for ``user_id``: worded for any
    authenticator (an API key, a token of a plugin), not only for API keys."""
    return f"the credential is bound to user {bound!r} and cannot submit for {user_id!r}"


def forbidden(bound: str, user_id: str) -> HttpResponse:
    """403 for a credential bound to ``bound`` that submits for someone else."""
    return error_response(403, "forbidden", not_yours(bound, user_id))


def may_see(principal: Principal | None, owner: str) -> bool:
    """Whether a job of ``owner`` is visible: to every unbound key, else to its own user."""
    return principal is None or principal.user_id is None or principal.user_id == owner
