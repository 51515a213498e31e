"""Secrets in a config: which values are secret, and how they are hidden when printed.

A value is secret when its key says so (``password``, ``token``, ``api_key``...),
when it sits where secrets do (``auth.keys[].key``), or when it came from an
environment variable whose name says so. URL passwords are always hidden, in the
address (``redis://user:pw@host``) and in the arguments (``?password=``, ``?ssl_password=``).
"""

from __future__ import annotations

import re
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from taskhub.config.paths import Loc

SECRET_NAME = re.compile(
    r"(^|_)(password|passwd|pass|secret|token|api_?key|credentials?|private_?key)(_|$)", re.I
)
# A URL argument whose name says it is secret (password=, ssl_password=), and its value.
_SECRET_ARGUMENT = re.compile(
    r"(?:(?<=^)|(?<=&))([^=&]*(?:password|passwd|secret|token)[^=&]*)=([^&]*)", re.I
)
# Secret by position though not by name: the api_key authenticator's keys.
SECRET_FIELDS = frozenset({("auth", "keys", "key")})


class SecretIndex(Protocol):
    """A loaded config, as far as masking needs it (:class:`taskhub.config.raw.RawConfig`)."""

    data: dict[str, Any]

    def is_secret(self, loc: Loc) -> bool: ...


def is_secret_path(loc: Loc, marked: set[Loc]) -> bool:
    """Whether ``loc`` holds a secret: by its names, its place, or a mark from interpolation."""
    if any(isinstance(part, str) and SECRET_NAME.search(part) for part in loc):
        return True
    names = tuple(part for part in loc if isinstance(part, str))
    if any(names[: len(field)] == field for field in SECRET_FIELDS):
        return True
    return any(loc[: len(s)] == s for s in marked)


def mask_url(url: str) -> str:
    """Hide the passwords in a URL, keeping everything else readable."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "***"
    masked = url
    if parts.query:  # the text after "?" as written, so only the secrets change
        query = _SECRET_ARGUMENT.sub(r"\1=***", parts.query)
        masked = masked.replace(f"?{parts.query}", f"?{query}", 1)
    if parts.password is not None:
        user = parts.username or ""
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        scheme, _, rest = masked.partition("://")
        masked = f"{scheme}://{user}:***@{host}{rest[len(parts.netloc) :]}"
    return masked


def _url_secrets(url: str) -> set[str]:
    """The passwords in a URL, as written and decoded."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return set()
    found = [parts.password or ""]
    found += [value for _, value in _SECRET_ARGUMENT.findall(parts.query)]
    return {form for secret in found if secret for form in (secret, unquote(secret))}


def mask_secrets(value: Any, loc: Loc, raw: SecretIndex) -> Any:
    """A copy of ``value`` fit to print: secrets replaced, URL passwords hidden."""
    if isinstance(value, dict):
        return {k: mask_secrets(v, (*loc, k), raw) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_secrets(v, (*loc, i), raw) for i, v in enumerate(value)]
    if isinstance(value, str) and "://" in value and mask_url(value) != value:
        return mask_url(value)  # the password hidden, the rest still readable
    if raw.is_secret(loc) and value not in (None, ""):
        return "***"
    return value


def secret_values(raw: SecretIndex) -> set[str]:
    """Every secret in the config, as the log formatters must hide it.

    The same rules as :func:`mask_secrets`: URL passwords (as written and
    decoded) and every value at a secret path.
    """
    found: set[str] = set()

    def walk(value: Any, loc: Loc) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(item, (*loc, key))
        elif isinstance(value, list):
            for index, item in enumerate(value):
                walk(item, (*loc, index))
        elif isinstance(value, str) and value:
            if "://" in value:
                found.update(_url_secrets(value))
            if raw.is_secret(loc):
                found.add(value)

    walk(raw.data, ())
    return found
