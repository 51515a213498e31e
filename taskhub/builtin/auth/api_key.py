"""``api_key``: static keys from the environment, each optionally bound to one user id.

Keys are looked up by their SHA-256 digest, never compared as strings: the time a
lookup takes depends on the digest, which tells an attacker nothing about any key
(the same reasoning as :func:`hmac.compare_digest`). Keys are secrets to the config
loader (``auth.keys[].key``), so ``taskhub check``, errors and logs print ``***``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import Field, field_validator

from taskhub import Authenticator, Headers, Options, Principal, Unauthenticated, hookimpl
from taskhub.bearer import bearer_credentials, digest
from taskhub.http import HEADER_NAME
from taskhub.jobs import UserId

MIN_KEY_LENGTH = 16
AUTHORIZATION = "authorization"


class ApiKey(Options):
    """One key: ``key`` (from the environment), a ``name`` for logs, and optionally the
    ``user_id`` it is bound to."""

    key: str = Field(
        min_length=MIN_KEY_LENGTH,
        max_length=1024,
        description="the key clients send; read it from the environment; unique",
    )
    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$",
        description="labels the key in logs and the start-up line; unique",
    )
    user_id: UserId | None = Field(
        None,
        description="the one user this key may submit for and read the jobs of; null: any",
    )


class ApiKeyAuth(Authenticator):
    name = "api_key"

    class Config(Options):
        header: str = Field(
            "Authorization",
            description="Authorization (sent as Bearer <key>) or a header holding the bare key",
        )
        keys: list[ApiKey] = Field(min_length=1, description="the keys that are let in")

        @field_validator("header")
        @classmethod
        def _header_name(cls, header: str) -> str:
            if not HEADER_NAME.match(header):
                raise ValueError("must be an HTTP header name, e.g. Authorization or X-API-Key")
            return header

        @field_validator("keys")
        @classmethod
        def _unique(cls, keys: list[ApiKey]) -> list[ApiKey]:
            for index, entry in enumerate(keys):
                for earlier, other in enumerate(keys[:index]):
                    if other.key == entry.key:
                        raise ValueError(
                            f"keys[{index}] ({entry.name!r}) has the same key as "
                            f"keys[{earlier}] ({other.name!r}); every key must be different"
                        )
                    if other.name == entry.name:
                        raise ValueError(
                            f"keys[{index}] and keys[{earlier}] are both named {entry.name!r}; "
                            "names label keys in the logs, so each needs its own"
                        )
            return keys

    config: Config

    def __init__(self, config: Options) -> None:
        super().__init__(config)
        self._by_digest = {
            digest(entry.key): Principal(entry.name, entry.user_id) for entry in self.config.keys
        }
        self._header = self.config.header.lower()
        self._bearer = self._header == AUTHORIZATION
        how = "Authorization: Bearer <key>" if self._bearer else f"{self.config.header}: <key>"
        self._missing = f"send an API key: {how}"

    def authenticate(self, headers: Headers) -> Principal:
        value = headers.get(self._header)
        given = bearer_credentials(value) if self._bearer else (value or "").strip()
        if not given:
            raise Unauthenticated(self._missing)
        principal = self._by_digest.get(digest(given))
        if principal is None:
            raise Unauthenticated("unknown API key")
        return principal

    @property
    def challenge(self) -> str:
        if self._bearer:
            return 'Bearer realm="taskhub"'
        return f'ApiKey realm="taskhub", header="{self.config.header}"'

    def security_scheme(self) -> dict[str, Any]:
        if self._bearer:
            return {"type": "http", "scheme": "bearer", "description": "an API key"}
        return {"type": "apiKey", "in": "header", "name": self.config.header}

    def summary(self) -> str:
        bound = sum(1 for entry in self.config.keys if entry.user_id is not None)
        names = ", ".join(entry.name for entry in self.config.keys)
        return f"api_key in {self.config.header}: {names} ({bound} bound to a user)"


@hookimpl
def register_authenticators(register: Callable[[type[Authenticator]], None]) -> None:
    register(ApiKeyAuth)
