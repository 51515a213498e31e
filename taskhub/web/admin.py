"""``GET``/``DELETE /admin/limits/{key}``: show or reset one key's rate-limit state over HTTP;
``GET``/``PUT``/``DELETE /admin/weights/{user_id}``: a user's weight under fair scheduling.

Off unless ``limits.admin.enabled``: the routes then do not exist (404). When on,
every request needs ``Authorization: Bearer <limits.admin.token>``: none is a 401,
a wrong one a 403, and the token is compared in constant time. ``?rule=NAME``
narrows to one rule (an unknown one is a 400). The key is percent-decoded once,
so IPv6 addresses, emails and even ``/`` (as ``%2F``) work.

A reset also forgets the key in this process's deny cache, so the client is
admitted again at once. Other server processes keep their cached refusals until
these run out: at most the Retry-After they answered with.

A weight set here applies to the next turns at once, in every shard; ``DELETE``
puts back the config's (``queue.weights``, else 1). A worker's start writes the
config's weights again.
"""

from __future__ import annotations

import logging
from urllib.parse import parse_qs, unquote

from pydantic import ValidationError

from taskhub.bearer import bearer_credentials, bearer_token_ok
from taskhub.components import QueueBackend
from taskhub.errors import BackendUnavailable
from taskhub.http import HttpRequest, HttpResponse
from taskhub.limits.admin import LimitsAdmin, UnknownRule, reset_body, show_body
from taskhub.web.models import WeightRequest
from taskhub.web.responses import error_response, json_response, unavailable

logger = logging.getLogger(__name__)

PREFIX = "/admin/limits/"
WEIGHTS_PREFIX = "/admin/weights/"
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="taskhub admin"'}
LIMITER_DOWN = "the limiter's Redis is unreachable; retry shortly"


class AdminRoute:
    """A route behind ``limits.admin.token``; Redis down is a 503 with this Retry-After."""

    def __init__(self, token: str, retry_after_s: int) -> None:
        self.token = token
        self.retry_after_s = retry_after_s


class LimitsEndpoint(AdminRoute):
    """Both methods of ``/admin/limits/{key}``."""

    def __init__(self, admin: LimitsAdmin, token: str, retry_after_s: int) -> None:
        super().__init__(token, retry_after_s)
        self.admin = admin

    async def __call__(self, request: HttpRequest, key: str) -> HttpResponse:
        subject = admitted(request, self.token, key)
        if isinstance(subject, HttpResponse):
            return subject
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


def admitted(request: HttpRequest, token: str, key: str) -> str | HttpResponse:
    """The path's key, percent-decoded, or the 401/403/400 that refuses the request."""
    header = request.headers.get("authorization")
    if bearer_credentials(header) is None:
        message = "send the admin token: Authorization: Bearer <token>"
        return error_response(401, "unauthorized", message, CHALLENGE)
    if not bearer_token_ok(header, token):
        return error_response(403, "forbidden", "wrong admin token")
    try:
        return unquote(key, errors="strict")
    except UnicodeDecodeError:
        return error_response(400, "bad_request", "the key is not percent-encoded UTF-8")


class WeightsEndpoint(AdminRoute):
    """Every method of ``/admin/weights/{user_id}``: read, set (``{"weight": n}``), reset."""

    def __init__(self, queue: QueueBackend, token: str, retry_after_s: int) -> None:
        super().__init__(token, retry_after_s)
        self.queue = queue

    async def __call__(self, request: HttpRequest, key: str) -> HttpResponse:
        user_id = admitted(request, self.token, key)
        if isinstance(user_id, HttpResponse):
            return user_id
        try:
            if request.method == "GET":
                weight = await self.queue.weight(user_id)
            elif request.method == "PUT":
                try:
                    wanted = WeightRequest.model_validate_json(request.body).weight
                except ValidationError as exc:
                    return weight_problem(exc)
                weight = await self.queue.set_weight(user_id, wanted)
            else:
                weight = await self.queue.set_weight(user_id, None)
        except BackendUnavailable:
            return unavailable(self.retry_after_s)
        if request.method != "GET":
            logger.info("admin weight of %r set to %d from %s", user_id, weight, request.client)
        return json_response(200, {"user_id": user_id, "weight": weight})


def weight_problem(exc: ValidationError) -> HttpResponse:
    """The 400 (not a JSON object) or 422 (naming the field) for a bad weight body."""
    error = exc.errors(include_url=False)[0]
    if error["type"] == "json_invalid" or not error["loc"]:
        return error_response(400, "invalid_body", 'send a JSON object: {"weight": 1 to 1000}')
    name = ".".join(str(part) for part in error["loc"])
    message = "unknown field" if error["type"] == "extra_forbidden" else error["msg"]
    body = {
        "error": "invalid_request",
        "message": f"{name}: {message}",
        "problems": [{"field": name, "message": message}],
    }
    return json_response(422, body)
