"""``taskhub submit URL --user ID [--task T] [--payload JSON] [--wait N]``: queue one job
through the HTTP API, with :mod:`taskhub.client`.

Prints the job as JSON on stdout (with ``--wait``, its state once settled or when the
wait ends). Exit codes: 0 queued; 3 rate limited (the refusal, with ``retry_after``,
on stdout); 2 bad input (the command line, a payload that is not a JSON object, a URL
that is not http(s), a 400/422 from the server, or a key it refuses); 1 when the
server is unavailable or answers something else. The client (and httpx) is imported
when the command runs, so ``taskhub --help`` does not pay for it.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any

import click
import orjson

from taskhub.cli.group import NumberIn, debugging

if TYPE_CHECKING:
    from taskhub.client import ClientError

RATE_LIMITED = 3
BAD_INPUT = 2
FAILED = 1

SECONDS = NumberIn(
    float,
    0.001,
    86400.0,
    noun="a number of seconds",
    out_of_range="{value:g} is out of range (0.001 to 86400 seconds)",
)


def json_object(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    try:
        payload = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON ({exc})") from None
    if not isinstance(payload, dict):
        raise click.BadParameter(f"must be a JSON object, not {type(payload).__name__}")
    return payload


@click.command(help="queue a task on a running taskhub over HTTP and print the job as JSON")
@click.argument("url", metavar="URL")
@click.option("--user", "user_id", required=True, metavar="ID", help="the user the job is for")
@click.option("--task", metavar="T", help="the task to run (default: the server's default_task)")
@click.option(
    "--payload", metavar="JSON", callback=json_object, help="the task's payload, a JSON object"
)
@click.option(
    "--wait",
    type=SECONDS,
    metavar="N",
    help="wait up to N seconds for the job to settle and print its state then",
)
@click.option("--idempotency-key", metavar="KEY", help="default: a new one for this submission")
@click.option("--api-key", envvar="TASKHUB_API_KEY", metavar="KEY", help="or TASKHUB_API_KEY")
@click.option(
    "--api-key-header",
    default="Authorization",
    show_default=True,
    metavar="NAME",
    help="the header the server's api_key auth reads (auth.header)",
)
@click.option(
    "--retry",
    type=SECONDS,
    metavar="SECONDS",
    help="retry 429, 503 and lost answers (after Retry-After) for up to this long",
)
@click.option(
    "--timeout",
    type=SECONDS,
    default=10.0,
    show_default=True,
    metavar="SECONDS",
    help="per request",
)
def submit(
    *,  # click passes every parameter by name
    url: str,
    user_id: str,
    task: str | None,
    payload: dict[str, Any] | None,
    wait: float | None,
    idempotency_key: str | None,
    api_key: str | None,
    api_key_header: str,
    retry: float | None,
    timeout: float,
) -> int:
    from taskhub.client import Client, ClientError, Retry  # noqa: PLC0415 (keeps --help fast)

    if not debugging():  # httpx logs every request at INFO
        logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        client = Client(
            url,
            api_key=api_key,
            api_key_header=api_key_header,
            timeout=timeout,
            retry=Retry(deadline=retry) if retry is not None else None,
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="URL") from None
    with client:
        try:
            queued = client.submit(user_id, task, payload, idempotency_key=idempotency_key)
            job = client.wait(queued.job_id, wait) if wait is not None else queued
        except ClientError as exc:
            return failed(exc)
    write_json(job.model_dump(mode="json"))
    return 0


def failed(exc: ClientError) -> int:
    """Say what went wrong on stderr (the refusal's body on stdout); the exit code."""
    from taskhub.client import Invalid, RateLimited, Unauthorized  # noqa: PLC0415

    if isinstance(exc, RateLimited):
        write_json(exc.body if isinstance(exc.body, dict) else {"retry_after": exc.retry_after})
        say(f"rate limited by {exc.policy!r}: retry after {exc.retry_after} s")
        return RATE_LIMITED
    if isinstance(exc, Invalid):
        problems = "".join(f"\n  {p.field}: {p.message}" for p in exc.problems)
        say(f"the server refused the request: {exc.message}{problems}")
        return BAD_INPUT
    if isinstance(exc, Unauthorized):
        say(f"the server refused the API key: {exc.message}")
        return BAD_INPUT
    say(str(exc))
    return FAILED


def write_json(body: Any) -> None:
    sys.stdout.write(orjson.dumps(body).decode() + "\n")


def say(message: str) -> None:
    sys.stderr.write(f"taskhub submit: {message}\n")
