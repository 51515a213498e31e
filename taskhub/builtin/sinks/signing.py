"""The webhook signature: ``t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">``.

The scheme Stripe's webhooks use, so receivers can reuse what they know: the
timestamp is inside the signed text, so a receiver that refuses old timestamps
also refuses a replayed request, and the ``v1=`` version leaves room for a
second scheme (or a second secret during rotation) in the same header.
"""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "Webhook-Signature"


def signature(secret: bytes, timestamp: int, body: bytes) -> str:
    """The hex HMAC-SHA256 of ``<timestamp>.<body>`` under ``secret``."""
    signed = str(timestamp).encode() + b"." + body
    return hmac.new(secret, signed, hashlib.sha256).hexdigest()


def signature_header(secret: bytes, timestamp: int, body: bytes) -> str:
    """The value of the ``Webhook-Signature`` header for ``body`` sent at ``timestamp``."""
    return f"t={timestamp},v1={signature(secret, timestamp, body)}"
