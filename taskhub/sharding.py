"""Where a queue's keys, and each admission's limiter keys, live when the queue has shards.

A shard is a queue whose every key carries one Redis Cluster hash tag, so that
all the keys of one admission (its rules' limiter keys and its job's queue keys)
hash to one slot and the admission stays one atomic Lua script, while the
shards spread over the cluster's masters. One shard off a cluster keeps every
key exactly as it was: nothing is tagged.

The shard of a user is a hash of the user id, never the id itself, so no user
id can pick a slot (ids are also escaped by :mod:`taskhub.keys`, so braces in
them never form a tag).
"""

from __future__ import annotations

import itertools
import zlib
from typing import Literal

ShardBy = Literal["user", "round_robin"]
SHARD_BY: tuple[ShardBy, ...] = ("user", "round_robin")
MAX_SHARDS = 1024


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
        self._turn = itertools.count()

    @property
    def split(self) -> bool:
        """True when a job may land outside its user's home shard, so that the decision
        (in the home shard) and the enqueue cannot be one script."""
        return self.by == "round_robin" and self.count > 1

    def tag(self, shard: int) -> str:
        return f"{{{self.name}.{shard}}}"

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


UNSHARDED = Shards()
