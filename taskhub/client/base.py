"""What :class:`~taskhub.client.Client` and :class:`~taskhub.client.AsyncClient` share:
their settings, and the plan (:mod:`taskhub.client.plans`) behind each method."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, TypedDict

import httpx
from pydantic import BaseModel
from typing_extensions import Unpack

from taskhub.client import plans
from taskhub.client.plans import BatchItem, Call, Plan, ServerWaits
from taskhub.client.retry import Retry
from taskhub.version import __version__
from taskhub.web.models import Job, Queued

AUTHORIZATION = "authorization"


def checked_base_url(url: str | httpx.URL) -> httpx.URL:
    """An http(s) URL with a host; its path, if any, is where the API is mounted."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise ValueError(f"base_url {str(url)!r}: not a URL ({exc})") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(
            f"base_url {str(url)!r}: give an http:// or https:// URL with a host, "
            "e.g. http://127.0.0.1:8000 (or http://host/prefix for an app mounted there)"
        )
    if parsed.query or parsed.fragment:
        raise ValueError(f"base_url {str(url)!r}: no query or fragment, please")
    return parsed


def key_headers(api_key: str | None, header: str) -> dict[str, str]:
    """How the ``api_key`` authenticator reads a key: ``Authorization: Bearer <key>``,
    or the bare key in the header its config names (``auth.header``)."""
    if api_key is None:
        return {}
    if header.lower() == AUTHORIZATION:
        return {header: f"Bearer {api_key}"}
    return {header: api_key}


class Settings(TypedDict, total=False):
    """The clients' keyword arguments besides ``transport`` (see :class:`ClientBase`)."""

    api_key: str | None
    api_key_header: str
    timeout: float
    retry: Retry | None
    headers: Mapping[str, str] | None


class SubmitOptions(TypedDict, total=False):
    """``submit``'s optional body fields: sent only when given (servers with issue 17's
    scheduling take them; an older one answers 422 naming the field)."""

    priority: int | None
    delay: float | None
    run_at: datetime | str | None


class ClientBase:
    """Settings, and the plan of each method; subclasses send the requests.

    ``base_url`` may end in a path, where the API is mounted (``http://host/jobs``).
    ``api_key`` goes in ``api_key_header`` as the ``api_key`` authenticator reads it.
    ``retry`` (a :class:`~taskhub.client.Retry`) turns on retries of 429, 503 and lost
    answers; without it, each call makes one attempt. ``timeout``: seconds per attempt.
    """

    def __init__(
        self,
        base_url: str | httpx.URL,
        *,
        api_key: str | None = None,
        api_key_header: str = "Authorization",
        timeout: float = 10.0,
        retry: Retry | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.base_url = checked_base_url(base_url)
        self.timeout = timeout
        self.retry = retry
        self.headers = {
            "User-Agent": f"taskhub-client/{__version__}",
            **(headers or {}),
            **key_headers(api_key, api_key_header),
        }
        self._server_waits = ServerWaits()

    def _options(self, call: Call[Any]) -> dict[str, Any]:
        """httpx's arguments for ``call``: a long poll gets its wait on top of the timeout."""
        timeout = httpx.Timeout(self.timeout, read=self.timeout + call.extra_timeout)
        return {
            "method": call.method,
            "url": call.path,
            "json": call.json,
            "params": call.params or None,
            "headers": call.headers or None,
            "timeout": timeout,
        }

    def _submit(
        self,
        user_id: str,
        task: str | None,
        payload: Mapping[str, Any] | None,
        idempotency_key: str | None,
        **options: Unpack[SubmitOptions],
    ) -> Plan[Queued]:
        body = plans.task_body(user_id, task, payload, **options)
        return plans.request(plans.submit(body, idempotency_key), self.retry)

    def _submit_many(self, items: Iterable[Mapping[str, Any] | BaseModel]) -> Plan[list[BatchItem]]:
        return plans.request(plans.submit_many(items), self.retry)

    def _status(self, job_id: str) -> Plan[Job]:
        return plans.request(plans.status(job_id), self.retry)

    def _wait(self, job_id: str, timeout: float) -> Plan[Job]:
        return plans.wait(job_id, timeout, self.retry, self._server_waits)

    def _cancel(self, job_id: str) -> Plan[Job]:
        return plans.request(plans.cancel(job_id), self.retry)
