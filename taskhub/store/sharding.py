"""Where a queue's keys, and each admission's limiter keys, live when the queue has shards.

A shard is a queue whose every key carries one Redis Cluster hash tag, so that
all the keys of one admission (its rules' limiter keys and its job's queue keys)
hash to one slot and the admission stays one atomic Lua script, while the
shards spread over the cluster's masters. One shard off a cluster keeps every
key exactly as it was: nothing is tagged.

The shard of a user is a hash of the user id, never the id itself, so no user
id can pick a slot (ids are also escaped by :mod:`taskhub.store.keys`, so braces in
them never form a tag).
"""

from __future__ import annotations

import functools
import itertools
import zlib
from typing import Literal

from redis.crc import key_slot

ShardBy = Literal["user", "round_robin"]
SHARD_BY: tuple[ShardBy, ...] = ("user", "round_robin")
MAX_SHARDS = 1024
SLOTS = 16384  # Redis Cluster's hash slots


class Shards:
    """The key layout of one queue split in ``count`` shards, jobs placed ``by`` user or in turn."""

    def __init__(
        self, count: int = 1, by: ShardBy = "user", name: str = "", *, tagged: bool = False
    ) -> None:
        if not 1 <= count <= MAX_SHARDS:
            raise ValueError(f"shards must be 1 to {MAX_SHARDS}, not {count}")
        self.count = count
        self.by = by
        self.name = name
        # A cluster needs the tag even for one shard: the job's keys and the limiter's
        # must share a slot.
        self.tagged = tagged or count > 1
        self._tags = spread_tags(name, count) if self.tagged else ()
        self._turn = itertools.count()

    @property
    def split(self) -> bool:
        """True when a job may land outside its user's home shard, so that the decision
        (in the home shard) and the enqueue cannot be one script."""
        return self.by == "round_robin" and self.count > 1

    def tag(self, shard: int) -> str:
        return self._tags[shard]

    def shard_for(self, subject: str) -> int:
        """The home shard of a user id (or of any text): stable across processes and restarts."""
        if self.count == 1:
            return 0
        return zlib.crc32(subject.encode()) % self.count

    def place(self, user_id: str, job_id: str | None) -> int:
        """The shard a new job goes to. In turn, a job with a caller-given id goes by its id,
        so that a retry of it finds the same shard (and the job it already stored)."""
        if self.count == 1:
            return 0
        if self.by == "user":
            return self.shard_for(user_id)
        if job_id is not None:
            return self.shard_for(job_id)
        return next(self._turn) % self.count

    def queue_name(self, shard: int) -> str:
        """The name of shard ``shard``'s queue: the tag itself, so its keys all carry it."""
        return self.tag(shard) if self.tagged else self.name

    def key_prefix(self, prefix: str, shard: int) -> str:
        """Limiter keys for a decision in ``shard``: ``<prefix>:{<queue>.<shard>}:...``."""
        return f"{prefix}:{self.tag(shard)}" if self.tagged else prefix

    def key_prefixes(self, prefix: str) -> tuple[str, ...]:
        return tuple(self.key_prefix(prefix, shard) for shard in range(self.count))

    def job_id(self, key: str, shard: int) -> str:
        """A job id that names its shard (``<key>-<shard>``), so a lookup reads one shard."""
        return f"{key}-{shard}" if self.count > 1 else key

    def shard_of(self, job_id: str) -> int | None:
        """The shard a job id names; None when it names none of this queue's."""
        if self.count == 1:
            return 0
        _, dash, suffix = job_id.rpartition("-")
        if not dash or not (suffix.isascii() and suffix.isdigit()) or suffix != str(int(suffix)):
            return None
        shard = int(suffix)
        return shard if shard < self.count else None


@functools.cache
def spread_tags(name: str, count: int) -> tuple[str, ...]:
    """One hash tag per shard, shard ``i``'s slot in the ``i``-th of ``count`` equal parts
    of the 16384 slots.

    A cluster's masters serve contiguous slot ranges (``redis-cli --cluster create``
    splits them evenly), so shards spread over the slot space spread over the masters:
    6 shards on 3 masters are 2 on each, whatever the queue's name. A plain hash of
    ``{<queue>.<i>}`` could put 3 on one master and none on another. The tag is
    ``{<queue>.<i>}`` when that already lands in its part, else ``{<queue>.<i>.<k>}``
    with the smallest ``k`` that does: a pure function of name and count, so every
    process agrees.
    """
    tags = []
    for shard in range(count):
        low, high = shard * SLOTS // count, (shard + 1) * SLOTS // count
        for attempt in itertools.count():
            tag = f"{{{name}.{shard}}}" if attempt == 0 else f"{{{name}.{shard}.{attempt}}}"
            if low <= key_slot(tag.encode()) < high:
                tags.append(tag)
                break
    return tuple(tags)


UNSHARDED = Shards()
