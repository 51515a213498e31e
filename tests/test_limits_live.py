"""Rate limiting through real ``taskhub`` processes: concurrency truth, fail modes,
backpressure and idempotency, over HTTP on real Redis servers."""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.configs import config_dict
from tests.support.namespaces import Namespace
from tests.support.processes import wait_until
from tests.support.redis_servers import PrivateRedis

USERS = 50
CLIENTS = 16
SECONDS = 5.0
ALLOWANCE = 10  # what each strategy below allows one user in the test's 5 s

STRATEGIES = {
    # 10 tokens and one more per hour: exactly 10 in 5 s
    "token_bucket": {"type": "token_bucket", "capacity": ALLOWANCE, "refill": 1, "period": 3600},
    # 10 per 60 s window, no block (a block would shorten the window and let more in)
    "fixed_window": {
        "type": "fixed_window",
        "points": ALLOWANCE,
        "duration": 60,
        "block_duration": 0,
    },
}


async def hammer(
    urls: list[str], users: int, clients: int, seconds: float
) -> list[tuple[str, int]]:
    """``clients`` concurrent clients posting for ``users`` users, round-robin over ``urls``."""
    results: list[tuple[str, int]] = []
    deadline = time.monotonic() + seconds
    counter = itertools.count()

    async def client(index: int) -> None:
        async with httpx.AsyncClient(timeout=10) as http:
            while time.monotonic() < deadline:
                n = next(counter)
                user = f"user-{n % users}"
                url = urls[n % len(urls)]
                response = await http.post(f"{url}/task", json={"user_id": user})
                results.append((user, response.status_code))

    await asyncio.gather(*(client(i) for i in range(clients)))
    return results


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_three_servers_never_admit_more_than_the_strategy_allows(
    tmp_path: Path, ns: Namespace, redis_url: str, spawn, strategy: str
) -> None:
    config = config_dict(ns, redis_url, limiter=STRATEGIES[strategy])
    servers = [spawn(config, "serve", cwd=tmp_path / f"server{i}") for i in range(3)]
    spawn(config, "worker", cwd=tmp_path, wait_for="started (worker)")
    results = asyncio.run(hammer([s.url for s in servers], USERS, CLIENTS, SECONDS))
    statuses = Counter(status for _, status in results)
    assert set(statuses) <= {200, 429}, statuses
    admitted = Counter(user for user, status in results if status == 200)
    expected = USERS * ALLOWANCE
    assert statuses[200] == expected, statuses

    log = tmp_path / "task.log"
    wait_until(lambda: log.exists() and len(log.read_text().splitlines()) >= expected, 20)
    time.sleep(0.3)
    pattern = re.compile(r"Task completed for user (\S+) at ")
    logged = Counter(pattern.match(line).group(1) for line in log.read_text().splitlines())
    print(
        f"\n[concurrency truth] {strategy}: {len(results)} requests from {CLIENTS} clients "
        f"over 3 servers, admitted {statuses[200]} (expected {expected}), "
        f"logged {sum(logged.values())}, refused {statuses[429]}"
    )
    assert logged == admitted
    assert set(logged.values()) == {ALLOWANCE} and len(logged) == USERS


# --------------------------------------------------------------------------- fail modes


def split_config(ns: Namespace, redis_url: str, limiter_url: str, mode: str) -> dict[str, Any]:
    """The queue on the shared Redis, the limiter on a private one the test stops."""
    limits = {
        "fail_mode": mode,
        "redis_url": limiter_url,
        "admission": [
            {
                "name": "per_user",
                "type": "token_bucket",
                "capacity": 3,
                "refill": 1,
                "period": 3600,
                "block": 0,
            }
        ],
    }
    config = config_dict(ns, redis_url, limits=limits)
    del config["limiter"]
    config["server"]["unavailable_retry_after"] = 2
    return config


def post(url: str, user: str = "u1", **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{url}/task", json={"user_id": user}, timeout=10, **kwargs)


def test_fail_closed_answers_503_then_recovers(
    ns: Namespace, redis_url: str, private_redis: PrivateRedis, spawn
) -> None:
    server = spawn(split_config(ns, redis_url, private_redis.url, "closed"), "serve")
    assert post(server.url).status_code == 200
    private_redis.stop()
    down = [post(server.url) for _ in range(5)]
    assert [r.status_code for r in down] == [503] * 5
    assert down[0].headers["Retry-After"] == "2" and down[0].json()["error"] == "unavailable"
    private_redis.start()  # empty: it kept nothing
    assert wait_until(lambda: post(server.url, "u2").status_code == 200, 5)
    assert server.output.count("is unreachable") == 1


def test_fail_open_admits_and_logs_once(
    ns: Namespace, redis_url: str, private_redis: PrivateRedis, spawn, sync_redis
) -> None:
    server = spawn(split_config(ns, redis_url, private_redis.url, "open"), "serve")
    private_redis.stop()
    statuses = [post(server.url).status_code for _ in range(8)]
    assert statuses == [200] * 8  # over the limit of 3, but nothing can decide that
    assert ns.queued(sync_redis) == 8
    assert server.output.count("is unreachable") == 1
    private_redis.start()
    time.sleep(1.2)  # past the probe interval, so the next request asks Redis again
    assert [post(server.url, "u2").status_code for _ in range(4)] == [200, 200, 200, 429]


def test_fail_local_limits_in_process_until_redis_returns(
    ns: Namespace, redis_url: str, private_redis: PrivateRedis, spawn
) -> None:
    server = spawn(split_config(ns, redis_url, private_redis.url, "local"), "serve")
    assert post(server.url).status_code == 200  # Redis: 2 left for u1
    private_redis.stop()
    # the local limiter starts empty and applies the same rule
    assert [post(server.url).status_code for _ in range(4)] == [200, 200, 200, 429]
    private_redis.start()  # a fresh Redis: the real state starts over too
    time.sleep(1.2)  # past the probe interval, so the next request asks Redis again
    assert [post(server.url, "u3").status_code for _ in range(4)] == [200, 200, 200, 429]
    keys = private_redis.client().keys(f"{ns.prefix}:per_user:*")
    assert keys == [f"{ns.prefix}:per_user:tb:u3".encode()]


# --------------------------------------------------------------------------- queue and retries


def test_backpressure_admits_exactly_max_depth(
    ns: Namespace, redis_url: str, spawn, sync_redis
) -> None:
    config = config_dict(ns, redis_url)
    config["queue"]["max_depth"] = 100
    server = spawn(config, "serve")

    async def flood() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=10) as http:
            gate = asyncio.Semaphore(32)

            async def one(n: int) -> httpx.Response:
                async with gate:
                    return await http.post(f"{server.url}/task", json={"user_id": f"u{n % 100}"})

            return await asyncio.gather(*(one(n) for n in range(500)))

    responses = asyncio.run(flood())
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {200: 100, 503: 400}, statuses
    full = next(r for r in responses if r.status_code == 503)
    assert full.json()["error"] == "queue_full" and full.headers["Retry-After"] == "1"
    assert sync_redis.zcard(f"saq:{ns.queue}:incomplete") == 100


def test_idempotency_key_returns_the_same_job_and_charges_once(
    ns: Namespace, redis_url: str, spawn, sync_redis
) -> None:
    server = spawn(config_dict(ns, redis_url), "serve")
    key = {"Idempotency-Key": "order-7"}
    first, again = post(server.url, headers=key), post(server.url, headers=key)
    assert first.status_code == again.status_code == 200
    assert first.json()["job_id"] == again.json()["job_id"]
    assert again.json()["replayed"] is True and again.headers["Idempotent-Replayed"] == "true"
    assert first.headers["X-RateLimit-Remaining"] == again.headers["X-RateLimit-Remaining"] == "19"
    assert ns.queued(sync_redis) == 1
    other_user = post(server.url, "u2", headers=key)
    assert other_user.json()["job_id"] != first.json()["job_id"]  # keys are per user
    bad = post(server.url, headers={"Idempotency-Key": "x" * 256})
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_idempotency_key"
    assert ns.queued(sync_redis) == 2
