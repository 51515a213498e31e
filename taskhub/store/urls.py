"""What a Redis URL names: the embedded store (``memory://``) or a server's address.

The lowest module of the store layer: clients, the pipeline and the cluster
router all read URLs through it, and it imports none of them.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from redis.asyncio.connection import parse_url

Address = tuple[str, int]


def is_embedded(url: str) -> bool:
    """``memory://``: fakeredis inside this process, no server at all."""
    return urlsplit(url).scheme.lower() == "memory"


def address_of(url: str) -> Address:
    """The host and port a ``redis://`` or ``rediss://`` URL connects to."""
    params = parse_url(url)
    return params.get("host", "localhost"), int(params.get("port", 6379))
