"""``webhook``: POST each completion and each final failure, signed, to a URL.

``emit`` and ``failed`` only queue the event and return: the job never waits for
the receiver, so a slow or failing receiver cannot slow the worker. Delivery
tasks send what is queued; a failure that may pass later (a 5xx, 408, 429, a
timeout or a dropped connection) is tried again after an exponential, jittered
delay, any other answer is final. The queue is bounded (``queue_size`` events
pending, waiting or retrying): an event that finds it full, one whose attempts
run out and the ones still pending when the grace at shutdown ends are logged
as undelivered (logger ``taskhub.webhook``, with the event's id), never lost
silently and never blocking.

Deliveries are at least once: a receiver de-duplicates on ``Webhook-Id``
(``<job id>-<event>``), the same on every attempt and on a job re-run after a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson
from pydantic import Field, SecretStr, field_validator

from taskhub import Completion, Failure, Options, Sink, Task, __version__, hookimpl
from taskhub.builtin.sinks.signing import SIGNATURE_HEADER, signature_header
from taskhub.jobs import iso

if TYPE_CHECKING:
    import httpx

logger = logging.getLogger("taskhub.webhook")

# Answers worth another attempt: the receiver is down, overloaded or slow.
RETRIED_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


@dataclass(slots=True)
class Delivery:
    """One event to deliver: its idempotency id, its body and how often it was tried."""

    webhook_id: str
    body: bytes
    attempts: int = 0


@dataclass(frozen=True, slots=True)
class _Keyed:
    key: int  # its entry in the pending events
    delivery: Delivery


class Webhook(Sink):
    name = "webhook"

    class Config(Options):
        url: str = Field(
            description="the http:// or https:// address each event is POSTed to",
        )
        secret: SecretStr = Field(
            description=(
                "the HMAC-SHA256 key the Webhook-Signature header is made with, at least "
                "16 characters; give it from the environment, as ${WEBHOOK_SECRET}"
            ),
        )
        timeout: float = Field(
            10, gt=0, le=300, description="seconds one attempt may take, connecting included"
        )
        attempts: int = Field(
            8, ge=1, le=50, description="attempts per event before it is logged as undelivered"
        )
        backoff: float = Field(
            1,
            gt=0,
            le=3_600,
            description=(
                "seconds before the second attempt; each later one waits twice as long, "
                "jittered between half and all of it"
            ),
        )
        max_backoff: float = Field(
            300, gt=0, le=86_400, description="the longest wait between two attempts, in seconds"
        )
        queue_size: int = Field(
            10_000,
            ge=1,
            le=1_000_000,
            description=(
                "events held in memory, waiting or retrying; one more is logged as "
                "undelivered rather than block the worker"
            ),
        )
        concurrency: int = Field(
            4, ge=1, le=256, description="deliveries in flight at once (connections to the URL)"
        )
        shutdown_grace: float = Field(
            10,
            ge=0,
            le=3_600,
            description=(
                "seconds a stopping worker keeps delivering what is pending; what is left "
                "then is logged as undelivered"
            ),
        )

        @field_validator("url")
        @classmethod
        def _http_url(cls, url: str) -> str:
            try:
                parts = urlsplit(url)
                parts.port  # noqa: B018 - raises on a port out of range
            except ValueError as exc:
                raise ValueError(f"is not a valid URL ({exc})") from None
            if parts.scheme not in ("http", "https"):
                shown = f"{parts.scheme}://" if parts.scheme else "none"
                raise ValueError(f"must start with http:// or https:// (scheme: {shown})")
            if not parts.hostname:
                raise ValueError("has no host: write it as https://host[:port]/path")
            return url

        @field_validator("secret")
        @classmethod
        def _long_enough(cls, secret: SecretStr) -> SecretStr:
            length = len(secret.get_secret_value())
            if length < 16:
                raise ValueError(f"must be at least 16 characters long (it has {length})")
            return secret

    config: Config

    def __init__(self, config: Options) -> None:
        super().__init__(config)
        self._key = self.config.secret.get_secret_value().encode()
        self._ready: asyncio.Queue[_Keyed] = asyncio.Queue()
        self._pending: dict[int, Delivery] = {}  # every event not yet delivered or given up
        self._retries: dict[int, asyncio.TimerHandle] = {}
        self._ids = itertools.count()
        self._senders: list[asyncio.Task[None]] = []
        self._client: httpx.AsyncClient | None = None
        self._http_error: type[Exception] = Exception  # httpx.HTTPError, once opened
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        self._deadline = 0.0

    async def open(self) -> None:
        # Imported here, not at the top: every taskhub process loads the built-in
        # plugins, and httpx (with its dependencies) takes about a third of a second.
        import httpx  # noqa: PLC0415

        self._http_error = httpx.HTTPError
        limits = httpx.Limits(max_connections=self.config.concurrency)
        self._client = httpx.AsyncClient(
            timeout=self.config.timeout,
            limits=limits,
            headers={"User-Agent": f"taskhub/{__version__} webhook"},
            follow_redirects=False,
        )
        self._senders = [
            asyncio.create_task(self._send_loop(), name=f"webhook-sender-{n}")
            for n in range(self.config.concurrency)
        ]

    # ------------------------------------------------------------------ the worker's side

    async def emit(self, completion: Completion) -> None:
        body = {
            **_task_fields("completed", completion.task),
            "completed_at": iso(completion.completed_at),
            "result": completion.result,
        }
        self._queue(f"{completion.task.job_id}-completed", body)

    async def failed(self, failure: Failure) -> None:
        body = {
            **_task_fields("failed", failure.task),
            "failed_at": iso(failure.failed_at),
            "error": failure.error,
        }
        self._queue(f"{failure.task.job_id}-failed", body)

    def _queue(self, webhook_id: str, body: dict[str, Any]) -> None:
        """Hold the event for the senders; never waits."""
        if self._closing:
            self._undelivered(webhook_id, "the worker is stopping")
            return
        if len(self._pending) >= self.config.queue_size:
            self._undelivered(webhook_id, f"{self.config.queue_size} events already pending")
            return
        try:
            data = orjson.dumps(body)
        except TypeError as exc:
            self._undelivered(webhook_id, f"its body is not JSON: {exc}")
            return
        key = next(self._ids)
        delivery = Delivery(webhook_id, data)
        self._pending[key] = delivery
        self._idle.clear()
        self._ready.put_nowait(_Keyed(key, delivery))

    # ------------------------------------------------------------------ delivery

    async def _send_loop(self) -> None:
        while True:
            keyed = await self._ready.get()
            try:
                await self._attempt(keyed.key, keyed.delivery)
            except Exception as exc:  # a bug must not cost a sender for good
                logger.exception("webhook %s: delivery failed", keyed.delivery.webhook_id)
                self._give_up(keyed.key, keyed.delivery, f"unexpected {type(exc).__name__}")

    async def _attempt(self, key: int, delivery: Delivery) -> None:
        delivery.attempts += 1
        retry_after: float | None = None
        try:
            response = await self._post(delivery)
        except self._http_error as exc:
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            retryable = True
        else:
            if 200 <= response.status_code < 300:
                self._done(key)
                logger.debug(
                    "webhook %s delivered (attempt %d, status %d)",
                    delivery.webhook_id,
                    delivery.attempts,
                    response.status_code,
                )
                return
            reason = f"status {response.status_code}"
            retryable = response.status_code in RETRIED_STATUSES
            retry_after = _retry_after(response.headers.get("retry-after"))
        if not retryable:
            self._done(key)
            self._undelivered(delivery.webhook_id, f"{reason}, not retried", delivery.attempts)
            return
        if delivery.attempts >= self.config.attempts:
            self._done(key)
            self._undelivered(
                delivery.webhook_id, f"{reason} on the last attempt", delivery.attempts
            )
            return
        delay = self.delay(delivery.attempts)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.config.max_backoff))
        if self._closing and time.monotonic() + delay > self._deadline:
            self._done(key)
            self._undelivered(
                delivery.webhook_id,
                f"{reason}; no time left to retry at shutdown",
                delivery.attempts,
            )
            return
        logger.info(
            "webhook %s attempt %d/%d failed (%s); next attempt in %.2f s",
            delivery.webhook_id,
            delivery.attempts,
            self.config.attempts,
            reason,
            delay,
        )
        loop = asyncio.get_running_loop()
        self._retries[key] = loop.call_later(delay, self._retry, key, delivery)

    async def _post(self, delivery: Delivery) -> httpx.Response:
        assert self._client is not None
        stamp = int(time.time())  # signed at each attempt: a retry is not a stale request
        headers = {
            "Content-Type": "application/json",
            "Webhook-Id": delivery.webhook_id,
            "Webhook-Attempt": str(delivery.attempts),
            SIGNATURE_HEADER: signature_header(self._key, stamp, delivery.body),
        }
        return await self._client.post(self.config.url, content=delivery.body, headers=headers)

    def delay(self, attempts: int) -> float:
        """Seconds before the next attempt after ``attempts`` failed ones: exponential,
        capped, with "equal jitter" (between half and all of it) so receivers coming
        back are not hit by every sender at once, while each wait stays longer than
        the one before."""
        full = min(self.config.max_backoff, self.config.backoff * 2.0 ** (attempts - 1))
        return full / 2 + random.uniform(0, full / 2)

    def _retry(self, key: int, delivery: Delivery) -> None:
        self._retries.pop(key, None)
        self._ready.put_nowait(_Keyed(key, delivery))

    def _done(self, key: int) -> None:
        self._pending.pop(key, None)
        if not self._pending:
            self._idle.set()

    def _give_up(self, key: int, delivery: Delivery, reason: str) -> None:
        self._done(key)
        self._undelivered(delivery.webhook_id, reason, delivery.attempts)

    def _undelivered(self, webhook_id: str, reason: str, attempts: int = 0) -> None:
        logger.error(
            "webhook %s undelivered after %d attempt%s: %s",
            webhook_id,
            attempts,
            "" if attempts == 1 else "s",
            reason,
        )

    # ------------------------------------------------------------------ shutdown

    async def close(self) -> None:
        """Deliver what is pending for up to ``shutdown_grace`` seconds (waiting retries
        are tried at once), then log the rest as undelivered."""
        self._closing = True
        self._deadline = time.monotonic() + self.config.shutdown_grace
        for key, handle in list(self._retries.items()):
            handle.cancel()
            self._retry(key, self._pending[key])
        if self._pending:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), self.config.shutdown_grace)
        for sender in self._senders:
            sender.cancel()
        await asyncio.gather(*self._senders, return_exceptions=True)
        for handle in self._retries.values():
            handle.cancel()
        for delivery in self._pending.values():
            self._undelivered(
                delivery.webhook_id,
                f"still pending when the {self.config.shutdown_grace:g} s shutdown grace ended",
                delivery.attempts,
            )
        self._pending.clear()
        if self._client is not None:
            await self._client.aclose()


def _task_fields(event: str, task: Task) -> dict[str, Any]:
    return {
        "event": event,
        "job_id": task.job_id,
        "task": task.name,
        "user_id": task.user_id,
        "attempt": task.attempt,
        "enqueued_at": iso(task.enqueued_at),
    }


def _retry_after(value: str | None) -> float | None:
    """A ``Retry-After`` in seconds (the date form is ignored: the backoff applies)."""
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


@hookimpl
def register_sinks(register: Callable[[type[Sink]], None]) -> None:
    register(Webhook)
