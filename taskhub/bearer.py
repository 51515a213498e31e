"""``Authorization: Bearer <token>``: read the token, and check it against a configured one.

Shared by every endpoint that guards itself with a token (the admin routes, the
dashboard) and by the ``api_key`` authenticator, so the header is parsed one way
everywhere. The check compares SHA-256 digests with :func:`hmac.compare_digest`:
its time depends neither on where the given token first differs nor on its length.
"""

from __future__ import annotations

import hashlib
import hmac

SCHEME = "bearer"


def bearer_credentials(header_value: str | None) -> str | None:
    """The token of an ``Authorization`` value ``Bearer <token>`` (scheme in any case);
    None when the header is absent, empty, or of another scheme."""
    if not header_value:
        return None
    scheme, _, token = header_value.partition(" ")
    token = token.strip()
    if scheme.lower() != SCHEME or not token:
        return None
    return token


def bearer_token_ok(header_value: str | None, token: str) -> bool:
    """True when ``header_value`` is ``Bearer <token>`` with exactly this token.

    An empty configured token never matches: a guard left unconfigured stays shut.
    """
    given = bearer_credentials(header_value)
    if given is None or not token:
        return False
    return hmac.compare_digest(digest(given), digest(token))


def digest(secret: str) -> bytes:
    """SHA-256 of a secret: fixed length, so comparing two reveals nothing about either."""
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).digest()
