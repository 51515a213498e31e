"""``GET``/``DELETE /admin/limits/{key}``: show or reset one key's rate-limit state over HTTP.

Off unless ``limits.admin.enabled``: the routes then do not exist (404). When on,
every request needs ``Authorization: Bearer <limits.admin.token>``: none is a 401,
a wrong one a 403, and the token is compared in constant time. ``?rule=NAME``
narrows to one rule (an unknown one is a 400). The key is percent-decoded once,
so IPv6 addresses, emails and even ``/`` (as ``%2F``) work.

A reset also forgets the key in this process's deny cache, so the client is
admitted again at once. Other server processes keep their cached refusals until
these run out: at most the Retry-After they answered with.
"""

from __future__ import annotations

import logging
from urllib.parse import parse_qs, unquote

from taskhub.bearer import bearer_credentials, bearer_token_ok
from taskhub.errors import BackendUnavailable
from taskhub.http import HttpRequest, HttpResponse
from taskhub.limits.admin import LimitsAdmin, UnknownRule, reset_body, show_body
from taskhub.web.responses import error_response, json_response, unavailable

logger = logging.getLogger(__name__)

PREFIX = "/admin/limits/"
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="taskhub admin"'}
LIMITER_DOWN = "the limiter's Redis is unreachable; retry shortly"


class LimitsEndpoint:
    """Both methods of ``/admin/limits/{key}``."""

    def __init__(self, admin: LimitsAdmin, token: str, retry_after_s: int) -> None:
        self.admin = admin
        self.token = token
        self.retry_after_s = retry_after_s

    def refusal(self, request: HttpRequest) -> HttpResponse | None:
        header = request.headers.get("authorization")
        if bearer_credentials(header) is None:
            message = "send the admin token: Authorization: Bearer <token>"
            return error_response(401, "unauthorized", message, CHALLENGE)
        if not bearer_token_ok(header, self.token):
            return error_response(403, "forbidden", "wrong admin token")
        return None

    async def __call__(self, request: HttpRequest, key: str) -> HttpResponse:
        denied = self.refusal(request)
        if denied is not None:
            return denied
        try:
            subject = unquote(key, errors="strict")
        except UnicodeDecodeError:
            return error_response(400, "bad_request", "the key is not percent-encoded UTF-8")
        rule = parse_qs(request.query, keep_blank_values=True).get("rule", [None])[0]
        try:
            if request.method == "DELETE":
                resets = await self.admin.reset(subject, rule)
                body = reset_body(subject, resets)
                logger.info(
                    "admin reset of %r (%s) from %s: %d key(s) deleted",
                    subject,
                    rule or "every rule",
                    request.client,
                    body["deleted"],
                )
                return json_response(200, body)
            return json_response(200, show_body(subject, await self.admin.show(subject, rule)))
        except UnknownRule as exc:
            return error_response(400, "unknown_rule", str(exc))
        except BackendUnavailable:
            return unavailable(self.retry_after_s, LIMITER_DOWN)
