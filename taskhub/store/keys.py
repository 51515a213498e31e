"""Turn client-chosen identifiers into Redis key parts that cannot collide or inject."""

from __future__ import annotations

import re
from urllib.parse import quote

_PLAIN = re.compile(r"[A-Za-z0-9_.\-~]+")


def escape_subject(value: str) -> str:
    """Percent-encode everything but ``A-Z a-z 0-9 _ . - ~``.

    The mapping is injective (``%`` itself is encoded), so two user ids never share
    a key; ``:`` cannot fake a key boundary and ``{``/``}`` cannot pick a Redis
    Cluster hash slot. Plain ids, the common case, pass through unchanged.
    """
    if _PLAIN.fullmatch(value):
        return value
    return quote(value, safe="")
