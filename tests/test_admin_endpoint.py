"""``/admin/limits/{key}`` through a real ``taskhub serve``: off by default, token-protected."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from pydantic import TypeAdapter

from taskhub.limits.admin import LimitsReset, LimitsShown
from tests.support.configs import config_dict, write_config
from tests.support.namespaces import Namespace
from tests.support.processes import run_cli

TOKEN = "test-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def admin_config(ns: Namespace, redis_url: str, **admin: Any) -> dict[str, Any]:
    """Three requests per user, then a minute's block (which the deny cache remembers)."""
    limits = {
        "admission": [
            {"name": "per_user", "type": "token_bucket", "capacity": 3, "refill": 1, "period": 60},
        ],
        "admin": admin,
    }
    config = config_dict(ns, redis_url, limits=limits)
    del config["limiter"]
    config["server"]["unavailable_retry_after"] = 2
    return config


def post(url: str, user: str) -> int:
    return httpx.post(f"{url}/task", json={"user_id": user}, timeout=10).status_code


def admin(
    url: str, method: str, key: str, headers: dict[str, str] | None = None, **params: str
) -> httpx.Response:
    """``method /admin/limits/{key}``; ``key`` goes into the path as given (percent-encoded)."""
    headers = AUTH if headers is None else headers
    return httpx.request(method, f"{url}/admin/limits/{key}", headers=headers, params=params)


def test_off_by_default_the_routes_do_not_exist(ns, redis_url, spawn) -> None:
    server = spawn(admin_config(ns, redis_url), "serve")
    for method in ("GET", "DELETE"):
        response = admin(server.url, method, "u1")
        assert response.status_code == 404 and response.json()["error"] == "not_found"


@pytest.fixture
def token_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The token as operators pass it: in the environment, read by ${TASKHUB_ADMIN_TOKEN}."""
    monkeypatch.setenv("TASKHUB_ADMIN_TOKEN", TOKEN)


def test_the_token_is_required_and_compared(ns, redis_url, spawn, token_env) -> None:
    config = admin_config(ns, redis_url, enabled=True, token="${TASKHUB_ADMIN_TOKEN}")
    server = spawn(config, "serve")
    for headers in ({}, {"Authorization": "Bearer"}, {"Authorization": f"Basic {TOKEN}"}):
        missing = admin(server.url, "GET", "u1", headers)
        assert missing.status_code == 401, headers
        assert missing.headers["WWW-Authenticate"].startswith("Bearer")
        assert missing.json()["error"] == "unauthorized"
    for wrong in (TOKEN[:-1], TOKEN + "x", "x" * len(TOKEN)):
        refused = admin(server.url, "DELETE", "u1", {"Authorization": f"Bearer {wrong}"})
        assert refused.status_code == 403 and refused.json()["error"] == "forbidden"
    assert admin(server.url, "GET", "u1", {"Authorization": f"bearer {TOKEN}"}).status_code == 200
    assert TOKEN not in server.output


def test_show_and_reset_over_http_and_the_deny_cache_forgets(
    ns, redis_url, spawn, token_env
) -> None:
    config = admin_config(ns, redis_url, enabled=True, token="${TASKHUB_ADMIN_TOKEN}")
    config["limits"]["admission"][0]["block"] = 60
    server = spawn(config, "serve")
    user = "ann/2001:db8::1@example.com"
    quoted = "ann%2F2001%3Adb8%3A%3A1%40example.com"
    assert [post(server.url, user) for _ in range(5)] == [200, 200, 200, 429, 429]
    assert post(server.url, "bob") == 200

    shown = admin(server.url, "GET", quoted)
    assert shown.status_code == 200
    body = TypeAdapter(LimitsShown).validate_python(shown.json())  # as /openapi.json says
    assert body["key"] == user
    (rule,) = body["rules"]
    assert (rule["rule"], rule["remaining"], rule["used"]) == ("per_user", 0, True)
    assert 55_000 < rule["retry_after_ms"] <= 60_000  # the block
    assert rule["redis_keys"][0]["key"] == f"{ns.prefix}:per_user:tb:{quoted}"

    unknown = admin(server.url, "GET", quoted, rule="per_usr")
    assert unknown.status_code == 400 and unknown.json()["error"] == "unknown_rule"
    assert "the rules are: per_user" in unknown.json()["message"]
    bad = admin(server.url, "GET", "%ff")
    assert bad.status_code == 400 and bad.json()["error"] == "bad_request"

    reset = admin(server.url, "DELETE", quoted, rule="per_user")
    assert reset.status_code == 200
    assert TypeAdapter(LimitsReset).validate_python(reset.json()) == {
        "key": user,
        "deleted": 1,
        "rules": [{"rule": "per_user", "stage": "admission", "deleted": 1}],
    }
    assert post(server.url, user) == 200  # at once, though this process had cached the block
    bob = admin(server.url, "GET", "bob").json()["rules"][0]
    assert bob["remaining"] == 2  # untouched
    assert f"admin reset of {user!r} (per_user) from 127.0.0.1: 1 key(s) deleted" in server.output


def test_an_unreachable_limiter_is_a_503_with_retry_after(
    ns, redis_url, private_redis, spawn, token_env
) -> None:
    config = admin_config(ns, private_redis.url, enabled=True, token="${TASKHUB_ADMIN_TOKEN}")
    server = spawn(config, "serve")
    assert admin(server.url, "GET", "u1").status_code == 200
    private_redis.stop()
    for method in ("GET", "DELETE"):
        down = admin(server.url, method, "u1")
        assert down.status_code == 503 and down.headers["Retry-After"] == "2"
        assert down.json()["error"] == "unavailable"
    assert "Traceback" not in server.output


def test_check_masks_the_token(tmp_path, ns, redis_url, token_env) -> None:
    config = admin_config(ns, redis_url, enabled=True, token="${TASKHUB_ADMIN_TOKEN}")
    checked = run_cli(["check", str(write_config(tmp_path, config))], tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert "    token: '***'" in checked.stdout
    assert TOKEN not in checked.stdout + checked.stderr
    # written into the file itself, it is still a secret by its name
    config["limits"]["admin"]["token"] = TOKEN
    checked = run_cli(["check", str(write_config(tmp_path, config))], tmp_path)
    assert "    token: '***'" in checked.stdout and TOKEN not in checked.stdout
