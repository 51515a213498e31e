"""Authenticators without a server: the built-ins, their config errors, a plugin's own,
and the shared bearer-token check."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from multidict import CIMultiDict

from taskhub import Principal, Unauthenticated
from taskhub.bearer import bearer_credentials, bearer_token_ok
from taskhub.errors import ConfigError, PluginError
from taskhub.hub.kernel import Hub
from taskhub.hub.plugins import load_plugins
from taskhub.web.auth import request_auth

ALICE = "alice-key-0123456789abcdef"
CI = "ci-key-0123456789abcdef-xyz"
ENV = {"TASKHUB_KEY_ALICE": ALICE, "TASKHUB_KEY_CI": CI}
API_KEYS = """\
auth:
  type: api_key
  keys:
    - {key: "${TASKHUB_KEY_ALICE}", name: alice, user_id: alice}
    - {key: "${TASKHUB_KEY_CI}", name: ci}
"""

TENANT_PLUGIN = """
from taskhub import Authenticator, Options, Principal, Unauthenticated, hookimpl


class TenantHeader(Authenticator):
    '''Trusts a gateway that sets X-Tenant: the tenant is the user.'''

    name = "tenant_header"

    class Config(Options):
        header: str = "X-Tenant"

    def authenticate(self, headers):
        tenant = headers.get(self.config.header)
        if not tenant:
            raise Unauthenticated(f"no {self.config.header} header")
        return Principal(f"tenant:{tenant}", user_id=tenant)


@hookimpl
def register_authenticators(register):
    register(TenantHeader)
"""


def hub_from(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Hub:
    path = tmp_path / "config.yaml"
    path.write_text("plugins_dir: null\n" + textwrap.dedent(text))
    return Hub.from_file(path, env=ENV if env is None else env)


def problems(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        hub_from(tmp_path, text, env)
    return str(caught.value)


def headers(**values: str) -> CIMultiDict[str]:
    return CIMultiDict({name.replace("_", "-"): value for name, value in values.items()})


# --------------------------------------------------------------------------- none


def test_none_is_the_default_and_is_never_called(tmp_path: Path) -> None:
    hub = hub_from(tmp_path, "")
    assert hub.authenticator.name == "none"
    assert request_auth(hub.authenticator) is None  # the server's handlers skip auth
    assert request_auth(hub_from(tmp_path, API_KEYS).authenticator) is not None
    assert hub.authenticator.security_scheme() is None
    assert hub.resolved()["auth"] == {"type": "none"}


# --------------------------------------------------------------------------- api_key


def test_api_key_finds_each_key_and_its_bound_user(tmp_path: Path) -> None:
    auth = hub_from(tmp_path, API_KEYS).authenticator
    assert auth.authenticate(headers(Authorization=f"Bearer {ALICE}")) == Principal(
        "alice", "alice"
    )
    assert auth.authenticate(headers(authorization=f"bearer  {CI} ")) == Principal("ci")
    assert auth.security_scheme() == {
        "type": "http",
        "scheme": "bearer",
        "description": "an API key",
    }
    assert auth.challenge == 'Bearer realm="taskhub"'


@pytest.mark.parametrize(
    ("sent", "message"),
    [
        ({}, "send an API key: Authorization: Bearer <key>"),
        ({"Authorization": "Bearer"}, "send an API key: Authorization: Bearer <key>"),
        ({"Authorization": f"Basic {ALICE}"}, "send an API key: Authorization: Bearer <key>"),
        ({"Authorization": f"Bearer {ALICE[:-1]}"}, "unknown API key"),
        ({"Authorization": f"Bearer {ALICE}x"}, "unknown API key"),
        ({"X-API-Key": ALICE}, "send an API key: Authorization: Bearer <key>"),
    ],
)
def test_api_key_refuses_missing_and_unknown_keys(
    tmp_path: Path, sent: dict[str, str], message: str
) -> None:
    auth = hub_from(tmp_path, API_KEYS).authenticator
    with pytest.raises(Unauthenticated) as caught:
        auth.authenticate(CIMultiDict(sent))
    assert caught.value.message == message
    assert ALICE not in message


def test_api_key_in_a_header_of_its_own(tmp_path: Path) -> None:
    auth = hub_from(
        tmp_path, API_KEYS.replace("type: api_key", "type: api_key\n  header: X-API-Key")
    ).authenticator
    assert auth.authenticate(headers(x_api_key=ALICE)).user_id == "alice"
    with pytest.raises(Unauthenticated, match=r"send an API key: X-API-Key: <key>"):
        auth.authenticate(headers(Authorization=f"Bearer {ALICE}"))
    assert auth.security_scheme() == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert 'header="X-API-Key"' in auth.challenge


def test_check_masks_every_key(tmp_path: Path) -> None:
    hub = hub_from(tmp_path, API_KEYS)
    keys = hub.resolved()["auth"]["keys"]
    assert keys == [
        {"key": "***", "name": "alice", "user_id": "alice"},
        {"key": "***", "name": "ci", "user_id": None},
    ]
    assert "alice" in hub.authenticator.summary() and ALICE not in hub.authenticator.summary()


def test_a_short_key_is_refused_without_showing_it(tmp_path: Path) -> None:
    message = problems(tmp_path, API_KEYS, {**ENV, "TASKHUB_KEY_CI": "short-key"})
    assert (
        "line 6: auth.keys[1].key: string should have at least 16 characters (got '***')" in message
    )
    assert "short-key" not in message


def test_a_keys_user_id_follows_the_apis_rule(tmp_path: Path) -> None:
    """A key bound to a user POST /task would refuse could never submit: refused at load."""
    message = problems(tmp_path, API_KEYS.replace("user_id: alice", 'user_id: "al\\u2028ice"'))
    assert "auth.keys[0].user_id: value error, must not contain control characters" in message


def test_duplicate_keys_and_names_are_refused_by_name(tmp_path: Path) -> None:
    message = problems(tmp_path, API_KEYS, {**ENV, "TASKHUB_KEY_CI": ALICE})
    assert (
        "auth.keys: value error, keys[1] ('ci') has the same key as keys[0] ('alice'); "
        "every key must be different"
    ) in message
    assert ALICE not in message
    message = problems(tmp_path, API_KEYS.replace("name: ci", "name: alice"))
    assert "keys[1] and keys[0] are both named 'alice'" in message


def test_a_missing_environment_variable_names_it_and_the_key(tmp_path: Path) -> None:
    message = problems(tmp_path, API_KEYS, {"TASKHUB_KEY_ALICE": ALICE})
    assert (
        "line 6: auth.keys[1].key: environment variable TASKHUB_KEY_CI is not set "
        "(set it, or give a default: ${TASKHUB_KEY_CI:-value})"
    ) in message


def test_api_key_needs_keys_and_a_header_name(tmp_path: Path) -> None:
    message = problems(tmp_path, "auth: {type: api_key, header: 'X API'}\n")
    assert "auth.header: value error, must be an HTTP header name" in message
    assert "auth.keys: required, but missing" in message
    message = problems(tmp_path, "auth: {type: api_key, keys: []}\n")
    assert "auth.keys: list should have at least 1 item" in message


def test_an_unknown_type_lists_the_choices(tmp_path: Path) -> None:
    message = problems(tmp_path, "auth:\n  type: oauth\n")
    assert (
        "line 3: auth.type: Unknown authenticator 'oauth'. Choose one of: api_key, none"
    ) in message


# --------------------------------------------------------------------------- plugins


def test_a_plugin_registers_an_authenticator(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "tenant.py").write_text(TENANT_PLUGIN)
    registry = load_plugins(plugins, (), entry_points=False)
    assert registry.names("authenticator") == ["api_key", "none", "tenant_header"]
    (info,) = [i for i in registry.plugins if i.name.endswith("tenant.py")]
    assert info.components == {"authenticator": ["tenant_header"]}
    path = tmp_path / "config.yaml"
    path.write_text(f"plugins_dir: {plugins}\nauth: {{type: tenant_header, header: X-Org}}\n")
    auth = Hub.from_file(path, env={}).authenticator
    assert auth.authenticate(headers(x_org="acme")) == Principal("tenant:acme", "acme")
    with pytest.raises(Unauthenticated, match="no X-Org header"):
        auth.authenticate(headers())


def test_a_plugin_may_not_register_something_else_as_an_authenticator(tmp_path: Path) -> None:
    (tmp_path / "bad.py").write_text(
        "from taskhub import hookimpl\n\n"
        "@hookimpl\ndef register_authenticators(register):\n    register(dict)\n"
    )
    with pytest.raises(PluginError, match=r"not a subclass of taskhub\.Authenticator"):
        load_plugins(tmp_path, (), entry_points=False)


# --------------------------------------------------------------------------- bearer


def test_bearer_token_ok_compares_the_whole_token() -> None:
    token = "admin-token-0123456789"
    assert bearer_token_ok(f"Bearer {token}", token)
    assert bearer_token_ok(f"bearer {token} ", token)
    for header in (
        None,
        "",
        "Bearer",
        f"Basic {token}",
        f"Bearer {token}x",
        f"Bearer {token[:-1]}",
    ):
        assert not bearer_token_ok(header, token), header
    assert not bearer_token_ok("Bearer ", "")
    assert not bearer_token_ok("Bearer x", "")  # an unset token never matches
    assert bearer_credentials("Bearer  abc ") == "abc"
    assert bearer_credentials("Token abc") is None
