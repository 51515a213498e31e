"""An ACL user with the rule docs/redis.md gives, on a private redis-server: the end-to-end
path works as that user, and a user missing a permission gets an error naming it."""

from __future__ import annotations

import re
import shlex
import time
from pathlib import Path

import httpx
import pytest

from tests.support.configs import ROOT, config_dict
from tests.support.dashboard import AUTH, TOKEN
from tests.support.end_to_end import end_to_end
from tests.support.namespaces import Namespace
from tests.support.processes import run_cli, wait_until
from tests.support.redis_servers import PrivateRedis

# A private redis-server, started here; the ACL is the matter, so one server.
pytestmark = [pytest.mark.redis, pytest.mark.servers("sanic")]

PASSWORD = "acl-test-password"


def documented_rule() -> list[str]:
    """The ``ACL SETUSER`` arguments docs/redis.md gives, for key_prefix taskhub and queue
    tasks, as redis-cli would send them."""
    page = (ROOT / "docs" / "redis.md").read_text()
    (block,) = re.findall(r"```bash\n(redis-cli ACL SETUSER taskhub .*?)```", page, re.S)
    words = shlex.split(block.replace("\\\n", " "))
    assert words[:4] == ["redis-cli", "ACL", "SETUSER", "taskhub"], words
    return words[4:]


def rule_for(ns: Namespace, *, without: str = "") -> list[str]:
    """The documented rule for this test's prefix and queue, less one permission."""
    mapping = {
        ">CHANGE-ME": f">{PASSWORD}",
        "~taskhub:*": f"~{ns.prefix}:*",
        "~saq:tasks:*": f"~saq:{ns.queue}:*",
        "~saq:job:tasks:*": f"~saq:job:{ns.queue}:*",
    }
    rule = [mapping.get(word, word) for word in documented_rule()]
    assert not without or without in rule
    return [word for word in rule if word != without]


@pytest.fixture
def server(tmp_path: Path):
    redis_server = PrivateRedis(tmp_path / "redis")
    redis_server.directory.mkdir()
    yield redis_server.start()
    redis_server.stop()


def user_url(server: PrivateRedis, ns: Namespace, **rule: str) -> str:
    user = f"taskhub-{ns.prefix.rsplit(':', 1)[-1]}"
    with server.client() as admin:
        admin.execute_command("ACL", "SETUSER", user, *rule_for(ns, **rule))
    return f"redis://{user}:{PASSWORD}@127.0.0.1:{server.port}/0"


@pytest.mark.parametrize("fairness", ["none", "user"])
def test_the_documented_rule_is_enough_for_everything(
    tmp_path: Path, server, spawn, fairness: str
) -> None:
    ns = Namespace.new()
    config = config_dict(
        ns,
        user_url(server, ns),
        dashboard={"enabled": True, "token": TOKEN},
        schedules=[{"name": "acl", "task": "log_completion", "interval": 1, "user_id": "clock"}],
    )
    config["queue"]["fairness"] = fairness
    process = end_to_end(spawn, tmp_path, config)  # submit, run, status, taskhub status
    url = process.url
    # The queue's other paths: a priority, a delay, a batch, a wait, an abort.
    jobs = [{"user_id": "bob", "priority": 5}, {"user_id": "bob", "delay": 1}]
    batch = httpx.post(f"{url}/tasks", json={"tasks": jobs}, timeout=10)
    assert batch.status_code == 200, batch.text
    ids = [result["job_id"] for result in batch.json()["results"]]
    for job_id in ids:
        waited = httpx.get(f"{url}/task/{job_id}", params={"wait": 10}, timeout=15)
        assert waited.json()["status"] == "complete", waited.text
    later = httpx.post(f"{url}/task", json={"user_id": "carol", "delay": 60}, timeout=10)
    aborted = httpx.delete(f"{url}/task/{later.json()['job_id']}", timeout=10)
    assert aborted.status_code == 200, aborted.text
    log = tmp_path / "task.log"
    assert wait_until(lambda: "user clock" in log.read_text(), 10), "no schedule tick ran"
    summary = httpx.get(f"{process.url}/dashboard/api/summary", headers=AUTH, timeout=10)
    assert summary.status_code == 200, summary.text
    shown = run_cli(["limits", "show", str(tmp_path / "config.yaml"), "alice"], tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert process.stop() == 0, process.output
    assert "NOPERM" not in process.output and "Traceback" not in process.output
    with server.client() as admin:
        denied = [entry for entry in admin.acl_log() if "taskhub-" in str(entry)]
    assert denied == [], denied


def test_a_missing_permission_is_a_clear_error_not_a_hang(tmp_path: Path, server, spawn) -> None:
    ns = Namespace.new()
    process = spawn(config_dict(ns, user_url(server, ns, without="+evalsha")), command="serve")
    started = time.monotonic()
    response = httpx.post(f"{process.url}/task", json={"user_id": "alice"}, timeout=10)
    assert response.status_code == 503, response.text
    assert time.monotonic() - started < 5
    assert process.wait_for("NOPERM", 5), process.output
    assert "evalsha" in process.output and "Traceback" not in process.output
    shown = run_cli(["limits", "show", str(tmp_path / "config.yaml"), "alice"], tmp_path)
    assert shown.returncode == 1
    assert "Redis refused a command to this user: NOPERM" in shown.stderr, shown.stderr
    assert "evalsha" in shown.stderr
