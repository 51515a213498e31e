"""``GET /task/{id}?wait=N``: the ``wait`` parameter, and a wait the client's hang-up ends."""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
from collections.abc import Awaitable, Callable
from typing import TypeVar
from urllib.parse import parse_qs

from taskhub.http import HttpResponse
from taskhub.jobs import MAX_WAIT
from taskhub.web.responses import json_response

T = TypeVar("T")

# A JSON number: "5", "0.5", "2e1". Not "5_0", " 5", "nan" or "inf", which float() takes.
SECONDS = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?")
WAIT_RULE = f"a number of seconds, more than 0 and at most {MAX_WAIT:g}"


class HungUp(Exception):
    """The client went away before the answer: nobody to answer."""


def wait_seconds(query: str) -> float | HttpResponse | None:
    """The ``wait`` the query asks for; None without one; a 422 naming it if it is bad."""
    if "wait" not in query:  # the usual GET /task/{id}: no parsing at all
        return None
    values = parse_qs(query, keep_blank_values=True).get("wait")
    if values is None:
        return None
    if len(values) > 1:
        return bad_wait(f"given {len(values)} times; give it once")
    text = values[0]
    seconds = float(text) if len(text) <= 32 and SECONDS.fullmatch(text) else math.nan
    if not 0 < seconds <= MAX_WAIT:
        return bad_wait(f"must be {WAIT_RULE}, not {text[:40]!r}")
    return seconds


def bad_wait(message: str) -> HttpResponse:
    problems = [{"field": "wait", "message": message}]
    body = {"error": "invalid_request", "message": f"wait: {message}", "problems": problems}
    return json_response(422, body)


async def unless_hung_up(call: Awaitable[T], hung_up: Callable[[], Awaitable[None]] | None) -> T:
    """``call``'s result, or HungUp as soon as the client goes (``call`` is cancelled then).

    Without ``hung_up`` the server cancels the request's task itself when its client goes.
    """
    if hung_up is None:
        return await call
    answer = asyncio.ensure_future(call)
    gone = asyncio.ensure_future(hung_up())
    try:
        await asyncio.wait((answer, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:  # answered, hung up, or this request's own task cancelled
        gone.cancel()
        if gone.done() and not gone.cancelled():
            gone.exception()  # a server's error reading the hang-up: taken as one
        if not answer.done():
            answer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await answer
    if answer.cancelled():
        raise HungUp
    return answer.result()
