"""The keys one test owns on the shared Redis, and their cleanup."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import redis


@dataclass(frozen=True)
class Namespace:
    """Keys one test owns on the shared Redis: its limiter prefix and its queue."""

    id: str

    @classmethod
    def new(cls) -> Namespace:
        return cls(uuid.uuid4().hex[:10])

    @property
    def prefix(self) -> str:
        return f"taskhub-test:{self.id}"

    @property
    def queue(self) -> str:
        return f"test-{self.id}"

    @property
    def patterns(self) -> list[str]:
        plain = [f"{self.prefix}:*", f"saq:{self.queue}:*", f"saq:job:{self.queue}:*"]
        # A sharded queue's keys carry the hash tag {<queue>.<shard>} (taskhub.store.sharding).
        return [*plain, f"saq:{{{self.queue}.*", f"saq:job:{{{self.queue}.*"]

    def keys(self, client: redis.Redis) -> set[bytes]:
        found: set[bytes] = set()
        for pattern in self.patterns:
            found.update(client.scan_iter(match=pattern, count=1000))
        return found

    def snapshot(self, client: redis.Redis) -> dict[bytes, Any]:
        """Every key this namespace owns, with its contents (except volatile worker stats)."""
        state: dict[bytes, Any] = {}
        for key in self.keys(client):
            if b":stats" in key or b":worker_info:" in key or b":sweep" in key:
                continue
            kind = client.type(key)
            if kind == b"hash":
                state[key] = client.hgetall(key)
            elif kind == b"list":
                state[key] = client.lrange(key, 0, -1)
            elif kind == b"zset":
                state[key] = client.zrange(key, 0, -1, withscores=True)
            else:
                state[key] = client.get(key)
        return state

    def cleanup(self, client: redis.Redis) -> None:
        keys = self.keys(client)
        if keys:
            client.delete(*keys)

    def queued(self, client: redis.Redis) -> int:
        return client.llen(f"saq:{self.queue}:queued")
