"""Side by side with the seed itself: taskhub's fixed_window answers as rate-limiter-flexible does.

This runs the real Node system from ../shared/seed-reference (Express + bull +
rate-limiter-flexible 11.4) and taskhub on the same private Redis, sends both the
same requests, and compares every status code. The model test in test_limiters.py
covers the same ground without Node; this one checks the model itself.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.configs import ROOT, config_dict
from tests.support.namespaces import Namespace
from tests.support.processes import free_port, wait_until
from tests.support.redis_servers import PrivateRedis

CANDIDATES = [
    os.environ.get("TASKHUB_SEED_REFERENCE", ""),
    ROOT.parent / "shared" / "seed-reference",
    "/work/shared/seed-reference",
]
SEED = next((Path(c) for c in CANDIDATES if c and (Path(c) / "start.sh").exists()), Path())


@pytest.fixture
def seed(private_redis: PrivateRedis, tmp_path: Path) -> Iterator[str]:
    if not (SEED / "start.sh").exists() or shutil.which("node") is None:
        pytest.skip(f"the seed reference ({SEED}) or Node.js is not available here")
    port = free_port()
    env = {**os.environ, "PORT": str(port), "REDIS_URL": private_redis.url, "PROCESS": "0"}
    log = (tmp_path / "seed.log").open("w")
    proc = subprocess.Popen([str(SEED / "start.sh")], env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            httpx.get(url, timeout=1)
        except httpx.TransportError:
            return proc.poll() is not None  # stop waiting if it died
        return True

    wait_until(up, 180, 0.2)  # the first run installs its npm packages
    if proc.poll() is not None:
        output = (tmp_path / "seed.log").read_text()[-500:]
        pytest.skip(f"the seed did not start (npm install failed?): {output}")
    yield url
    proc.terminate()
    proc.wait(10)
    log.close()


def test_fixed_window_matches_the_seed_request_for_request(
    seed: str, private_redis: PrivateRedis, spawn
) -> None:
    ns = Namespace.new()
    limiter = {"type": "fixed_window", "points": 20, "duration": 60, "block_duration": 1}
    taskhub = spawn(config_dict(ns, private_redis.url, limiter=limiter), "serve")
    with httpx.Client(timeout=5) as client:

        def both() -> tuple[int, int]:
            # alternate, so that both limiters see the same moments within a few ms
            ours = client.post(f"{taskhub.url}/task", json={"user_id": "parity"})
            theirs = client.post(f"{seed}/task", json={"user_id": "parity"})
            return ours.status_code, theirs.status_code

        for phase, count, pause in (("burst", 25, 1.2), ("after the block", 22, 0.3)):
            pairs = [both() for _ in range(count)]
            assert [o for o, _ in pairs] == [t for _, t in pairs], phase
            assert [o for o, _ in pairs] == [200] * 20 + [429] * (count - 20), phase
            time.sleep(pause)
        assert both() == (429, 429)  # still inside the second block
