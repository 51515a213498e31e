"""Fuzz ``POST /task`` on a live server: every malformed request is a JSON 4xx, never a
500, and leaves Redis as it was (nothing charged, nothing queued)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import redis
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.support.namespaces import Namespace

BODY_LIMIT = 65_536

# JSON values a client might send anywhere: unicode (NUL and controls included), huge
# and odd numbers, and containers of them.
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=2**63, max_value=2**200),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
    st.sampled_from(["\x00", "a\x00b", "\u2028", "\U0001f600", "\ufeff"]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
# A body that must be refused: each makes the object invalid on its own.
FLAWS = st.sampled_from(
    [
        ("user_id", 12345678901234567890123456789),
        ("user_id", ""),
        ("user_id", "a\x00b"),
        ("user_id", "x" * 300),
        ("user_id", ["a"]),
        ("task", "no-such-task"),
        ("task", 7),
        ("payload", [1, 2]),
        ("payload", {"n": 2**64}),  # valid JSON the queue cannot store
        ("userid", "a"),  # an unknown field
    ]
)


def flawed_object(flaw: tuple[str, Any], extra: dict[str, Any], duplicate: bool) -> bytes:
    """A JSON object with a flaw; with ``duplicate``, a valid user_id is written first
    and the flawed value after it under the same key (the last one counts)."""
    key, value = flaw
    fields = [f'"{k}": {json.dumps(v)}' for k, v in extra.items() if k not in {key, "userid"}]
    if key != "user_id":
        fields.insert(0, '"user_id": "fuzz"')
    if duplicate:
        fields.insert(0, f'"{key}": "fuzz"')
    fields.append(f"{json.dumps(key)}: {json.dumps(value)}")
    return ("{" + ", ".join(fields) + "}").encode()


def deep(depth: int, opener: str) -> bytes:
    closer = "]" if opener == "[" else "}"
    inner = '{"x": ' if opener == "{" else "["
    return f'{{"user_id": "a", "payload": {{"x": {inner * depth}1{closer * depth}}}}}'.encode()


EXTRA = st.dictionaries(st.sampled_from(["payload", "task", "user_id"]), VALUES, max_size=2)
BODIES = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=100).map(str.encode),
    st.builds(flawed_object, FLAWS, EXTRA, st.booleans()),
    st.builds(deep, st.integers(200, 20_000), st.sampled_from(["[", "{"])),
    st.sampled_from([b"", b"null", b"[]", b'"x"', b"1e400", b"{}", b"\xff\xfe{}", b'{"a":1}x']),
    st.integers(BODY_LIMIT + 1, BODY_LIMIT * 2).map(lambda n: b'{"user_id": "' + b"x" * n),
)
JSON_TYPES = st.sampled_from([None, "application/json", "application/problem+json"])
OTHER_TYPES = st.one_of(
    st.sampled_from(["text/plain", "application/xml", "multipart/form-data; boundary=x", ""]),
    st.from_regex(r"[a-z]{1,10}/[a-z.+-]{1,20}", fullmatch=True).filter(
        lambda t: not t.endswith("json")
    ),
)


def refused(url: str, body: bytes, content_type: str | None) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}
    response = httpx.post(f"{url}/task", content=body, headers=headers, timeout=10)
    assert 400 <= response.status_code < 500, (response.status_code, response.text, body[:200])
    assert response.headers["content-type"] == "application/json"
    event(f"{response.status_code} {response.json().get('error')}")  # --hypothesis-show-statistics
    answer = response.json()
    assert isinstance(answer["error"], str) and isinstance(answer["message"], str), answer


@pytest.fixture
def unchanged(live_server: tuple[str, Namespace], sync_redis: redis.Redis) -> Any:
    _, ns = live_server
    before = ns.snapshot(sync_redis)
    yield
    assert ns.snapshot(sync_redis) == before
    assert ns.queued(sync_redis) == 0


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


@FUZZ
@given(body=BODIES, content_type=JSON_TYPES)
def test_malformed_json_bodies_are_refused(live_server, unchanged, body, content_type) -> None:
    refused(live_server[0], body, content_type)


@FUZZ
@given(body=BODIES | st.builds(flawed_object, FLAWS, EXTRA, st.booleans()), kind=OTHER_TYPES)
def test_other_content_types_are_refused(live_server, unchanged, body, kind) -> None:
    refused(live_server[0], body, kind)


def test_a_payload_integer_over_64_bits_is_a_422(live_server, unchanged) -> None:
    """It parses as JSON but cannot be stored: a 422 naming the payload, not a 500."""
    response = httpx.post(
        f"{live_server[0]}/task", json={"user_id": "a", "payload": {"n": 2**64}}, timeout=10
    )
    assert response.status_code == 422
    assert response.json()["problems"][0]["field"] == "payload"
