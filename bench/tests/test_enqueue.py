"""The drain row's backlog (bench/enqueue.py): jobs admitted through taskhub's own
admission script, queued for a worker that has not started. It broke once unseen when
the kernel's attributes moved, and the drain row then measured nothing."""

from pathlib import Path

import pytest
import redis
import yaml

from bench.enqueue import enqueue_jobs
from tests.support.configs import config_dict
from tests.support.namespaces import Namespace
from tests.support.redis_servers import REDIS_URL


@pytest.mark.redis
def test_the_backlog_is_admitted_and_queued(tmp_path: Path) -> None:
    ns = Namespace.new()
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config_dict(ns, REDIS_URL)))
    client = redis.Redis.from_url(REDIS_URL)
    try:
        assert enqueue_jobs(path, 120) == 120
        assert ns.queued(client) == 120
    finally:
        ns.cleanup(client)
