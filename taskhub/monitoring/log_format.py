"""taskhub's log output: ``text`` (one readable line) or ``json`` (one object per line).

Both formatters hide secrets (the Redis password, the admin token, ...) in
everything they write, tracebacks included, so no log line can leak them.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

from taskhub.monitoring.log_context import ContextFilter

LogFormat = Literal["text", "json"]

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
CONTEXT_FIELDS = ("request_id", "job_id", "user_id", "task")
MASK = "***"
# Shorter secrets are not masked: replacing every "ab" would garble the logs.
MIN_SECRET_LENGTH = 4


class Masker:
    """Replaces each known secret in a text with ``***``."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first, so a secret that contains another is hidden whole.
        unique = {s for s in secrets if len(s) >= MIN_SECRET_LENGTH}
        self.secrets = sorted(unique, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text


class TextFormatter(logging.Formatter):
    """The classic line, secrets masked."""

    def __init__(self, mask: Masker) -> None:
        super().__init__(TEXT_FORMAT)
        self.mask = mask

    def format(self, record: logging.LogRecord) -> str:
        return self.mask(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log collectors: no parsing rules to maintain."""

    def __init__(self, mask: Masker) -> None:
        super().__init__()
        self.mask = mask

    def format(self, record: logging.LogRecord) -> str:
        mask = self.mask
        stamp = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        entry: dict[str, Any] = {
            "time": stamp.replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": mask(record.getMessage()),
        }
        fields = record.__dict__
        for name in CONTEXT_FIELDS:
            value = fields.get(name)
            if value is not None:
                entry[name] = mask(value) if isinstance(value, str) else value
        if record.exc_info:
            entry["exception"] = mask(self.formatException(record.exc_info))
        elif record.exc_text:
            entry["exception"] = mask(record.exc_text)
        if record.stack_info:
            entry["stack"] = mask(self.formatStack(record.stack_info))
        return orjson.dumps(entry, default=str).decode()


def formatter(kind: LogFormat, secrets: Iterable[str] = ()) -> logging.Formatter:
    mask = Masker(secrets)
    return JsonFormatter(mask) if kind == "json" else TextFormatter(mask)


class TaskhubHandler(logging.StreamHandler):  # type: ignore[type-arg]  # generic in typeshed only
    """stderr, with each record's request and job fields stamped on."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)
        self.addFilter(ContextFilter())


def install(kind: LogFormat = "text", secrets: Iterable[str] = ()) -> None:
    """Log to stderr in ``kind``; again later (the config read) to switch format and secrets.

    Leaves the root logger alone when something else (a test harness) already
    gave it handlers.
    """
    root = logging.getLogger()
    handler = next((h for h in root.handlers if isinstance(h, TaskhubHandler)), None)
    if handler is None:
        if root.handlers:
            return
        handler = TaskhubHandler()
        root.addHandler(handler)
    handler.setFormatter(formatter(kind, secrets))


def masked(text: str) -> str:
    """``text`` with the secrets the installed handler knows hidden (for non-log output)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, TaskhubHandler):
            mask = getattr(handler.formatter, "mask", None)
            if isinstance(mask, Masker):
                return mask(text)
    return text
