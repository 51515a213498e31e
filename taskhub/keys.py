"""Turn client-chosen identifiers into Redis key parts that cannot collide or inject."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING
from urllib.parse import quote

if TYPE_CHECKING:
    from taskhub.config import RedisSettings

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


def key_tag(settings: RedisSettings) -> str:
    """The hash tag in every key taskhub writes: ``{key_prefix}`` on a Redis Cluster, none
    on a single Redis.

    One tag puts every key, limiter state and queue alike, in one slot: a script's
    keys must share a slot, and admission writes both in one script. Interim, until
    queue shards give each shard a tag (and so a slot, and a master) of its own.
    """
    return f"{{{settings.key_prefix}}}" if settings.cluster else ""
