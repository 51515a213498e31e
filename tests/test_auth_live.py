"""Auth through a real ``taskhub serve`` on the real Redis: 401 and 403 charge and queue
nothing, a bound key sees only its user's jobs, the open endpoints stay open."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.configs import config_dict
from tests.support.namespaces import Namespace

ALICE = "alice-key-0123456789abcdef"
CI = "ci-key-0123456789abcdef-xyz"
AS_ALICE = {"Authorization": f"Bearer {ALICE}"}
AS_CI = {"Authorization": f"Bearer {CI}"}
TENANT_PLUGIN = """
from taskhub import Authenticator, Principal, Unauthenticated, hookimpl


class TenantHeader(Authenticator):
    name = "tenant_header"

    def authenticate(self, headers):
        tenant = headers.get("x-tenant")
        if not tenant:
            raise Unauthenticated("no X-Tenant header")
        return Principal(f"tenant:{tenant}", user_id=tenant)


@hookimpl
def register_authenticators(register):
    register(TenantHeader)
"""


@pytest.fixture
def key_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The keys as operators pass them: in the environment."""
    monkeypatch.setenv("TASKHUB_KEY_ALICE", ALICE)
    monkeypatch.setenv("TASKHUB_KEY_CI", CI)


def auth_config(ns: Namespace, redis_url: str) -> dict[str, Any]:
    keys = [
        {"key": "${TASKHUB_KEY_ALICE}", "name": "alice", "user_id": "alice"},
        {"key": "${TASKHUB_KEY_CI}", "name": "ci"},
    ]
    return config_dict(ns, redis_url, auth={"type": "api_key", "keys": keys})


def submit(url: str, user: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(f"{url}/task", json={"user_id": user}, headers=headers, timeout=10)


def bad_requests(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {
        sample.labels["code"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "taskhub_bad_requests_total"
    }


def test_401_and_403_charge_and_queue_nothing(ns, redis_url, sync_redis, spawn, key_env) -> None:
    server = spawn(auth_config(ns, redis_url), "serve")
    url = server.url
    for headers in (None, {"Authorization": f"Bearer {ALICE[:-1]}"}, {"X-API-Key": ALICE}):
        refused = submit(url, "alice", headers)
        assert refused.status_code == 401, headers
        assert refused.headers["WWW-Authenticate"] == 'Bearer realm="taskhub"'
        assert refused.json()["error"] == "unauthorized"
        assert set(refused.json()) == {"error", "message"}
        assert "X-RateLimit-Limit" not in refused.headers
    forbidden = submit(url, "bob", AS_ALICE)
    assert forbidden.status_code == 403
    assert forbidden.json() == {
        "error": "forbidden",
        "message": "the credential is bound to user 'alice' and cannot submit for 'bob'",
    }
    assert ns.keys(sync_redis) == set()  # no limiter key, no job
    assert bad_requests(url)["unauthorized"] == 3 and bad_requests(url)["forbidden"] == 1

    admitted = submit(url, "alice", AS_ALICE)
    assert admitted.status_code == 200 and admitted.headers["X-RateLimit-Remaining"] == "19"
    assert submit(url, "bob", AS_CI).status_code == 200  # an unbound key: any user
    assert ns.queued(sync_redis) == 2
    assert "auth: api_key in Authorization: alice, ci (1 bound to a user)" in server.output
    assert ALICE not in server.output and CI not in server.output


def test_a_bound_key_sees_and_aborts_only_its_own_users_jobs(
    ns, redis_url, sync_redis, spawn, key_env
) -> None:
    url = spawn(auth_config(ns, redis_url), "serve").url
    bobs = submit(url, "bob", AS_CI).json()["job_id"]
    alices = submit(url, "alice", AS_ALICE).json()["job_id"]
    missing = f"{url}/task/no-such-job"

    for method in ("GET", "DELETE"):
        for job in (bobs, alices):
            refused = httpx.request(method, f"{url}/task/{job}", timeout=10)
            assert refused.status_code == 401 and "WWW-Authenticate" in refused.headers
        hidden = httpx.request(method, f"{url}/task/{bobs}", headers=AS_ALICE, timeout=10)
        absent = httpx.request(method, missing, headers=AS_ALICE, timeout=10)
        assert hidden.status_code == absent.status_code == 404
        assert hidden.json() == absent.json()  # the same answer: existence is not told
    assert ns.queued(sync_redis) == 2  # bob's job was not aborted

    own = httpx.get(f"{url}/task/{alices}", headers=AS_ALICE, timeout=10)
    assert own.status_code == 200 and own.json()["user_id"] == "alice"
    assert httpx.get(f"{url}/task/{bobs}", headers=AS_CI, timeout=10).json()["user_id"] == "bob"
    aborted = httpx.delete(f"{url}/task/{alices}", headers=AS_ALICE, timeout=10)
    assert aborted.status_code == 200 and aborted.json()["status"] == "aborted"
    assert httpx.delete(f"{url}/task/{bobs}", headers=AS_CI, timeout=10).status_code == 200


def test_the_operational_endpoints_stay_open(ns, redis_url, spawn, key_env) -> None:
    url = spawn(auth_config(ns, redis_url), "serve").url
    for path in ("/health", "/ready", "/metrics", "/openapi.json", "/docs"):
        assert httpx.get(f"{url}{path}", timeout=10).status_code == 200, path
    spec = httpx.get(f"{url}/openapi.json", timeout=10).json()
    assert spec["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"
    assert "401" in spec["paths"]["/task/{job_id}"]["get"]["responses"]


def test_an_authenticator_from_a_plugin(ns, redis_url, sync_redis, spawn, tmp_path) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "tenant.py").write_text(TENANT_PLUGIN)
    config = config_dict(ns, redis_url, plugins_dir=str(plugins), auth={"type": "tenant_header"})
    url = spawn(config, "serve").url
    refused = submit(url, "acme")
    assert refused.status_code == 401 and refused.json()["message"] == "no X-Tenant header"
    assert submit(url, "other", {"X-Tenant": "acme"}).status_code == 403
    assert ns.keys(sync_redis) == set()
    assert submit(url, "acme", {"X-Tenant": "acme"}).status_code == 200
