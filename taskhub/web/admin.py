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
from typing import TYPE_CHECKING
from urllib.parse import unquote

from sanic import Request, Sanic
from sanic.response import HTTPResponse

from taskhub.bearer import bearer_credentials, bearer_token_ok
from taskhub.builtin.sanic.request_id import tracked
from taskhub.errors import BackendUnavailable
from taskhub.limits.admin import UnknownRule, reset_body, show_body
from taskhub.web.responses import error_response, json_response

if TYPE_CHECKING:
    from taskhub.hub.kernel import Hub

logger = logging.getLogger(__name__)

ROUTE = "/admin/limits/<key:path>"
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="taskhub admin"'}


def add_admin_routes(app: Sanic, hub: Hub, retry_after: int) -> None:
    """Add the routes if the config enables them; needs ``hub.admission`` built."""
    settings = hub.settings.limits.admin
    if not settings.enabled:
        return
    admin = hub.build_limits_admin()
    token = settings.token
    unavailable = {"Retry-After": str(retry_after)}

    def refusal(request: Request) -> HTTPResponse | None:
        header = request.headers.get("authorization")
        if bearer_credentials(header) is None:
            message = "send the admin token: Authorization: Bearer <token>"
            return error_response(401, "unauthorized", message, CHALLENGE)
        if not bearer_token_ok(header, token):
            return error_response(403, "forbidden", "wrong admin token")
        return None

    async def limits(request: Request, key: str) -> HTTPResponse:
        denied = refusal(request)
        if denied is not None:
            return denied
        try:
            subject = unquote(key, errors="strict")
        except UnicodeDecodeError:
            return error_response(400, "bad_request", "the key is not percent-encoded UTF-8")
        rule = request.get_args(keep_blank_values=True).get("rule")
        try:
            if request.method == "DELETE":
                resets = await admin.reset(subject, rule)
                body = reset_body(subject, resets)
                logger.info(
                    "admin reset of %r (%s) from %s: %d key(s) deleted",
                    subject,
                    rule or "every rule",
                    request.ip,
                    body["deleted"],
                )
                return json_response(200, body)
            return json_response(200, show_body(subject, await admin.show(subject, rule)))
        except UnknownRule as exc:
            return error_response(400, "unknown_rule", str(exc))
        except BackendUnavailable:
            message = "the limiter's Redis is unreachable; retry shortly"
            return error_response(503, "unavailable", message, unavailable)

    app.add_route(tracked(limits), ROUTE, methods=["GET", "DELETE"], name="admin_limits")
    logger.info("admin endpoint on: GET and DELETE /admin/limits/{key}")
