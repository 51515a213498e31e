"""One check of an ``Authorization: Bearer <token>`` header, shared by every guarded endpoint.

The admin endpoint and the dashboard each keep their own token; comparing them in
one place keeps the parsing and the constant-time compare identical, so a timing
difference can never tell a client how much of a guessed token was right.
"""

from __future__ import annotations

import hmac


def bearer_token_ok(header_value: str | None, token: str) -> bool:
    """Whether ``header_value`` is ``Bearer <token>`` (scheme case-insensitive).

    An empty configured token never matches: a guarded endpoint cannot be opened by
    leaving its token out of the config.
    """
    if not header_value or not token:
        return False
    scheme, _, given = header_value.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())
