"""Request validation, without a server: every way a body can be wrong."""

from __future__ import annotations

import json

import pytest

from taskhub.builtin.tasks.log_completion import LogCompletion
from taskhub.components import TaskSpec
from taskhub.web.submission import SubmissionError, SubmissionParser

PARSER = SubmissionParser(
    {"log_completion": TaskSpec("log_completion", LogCompletion(LogCompletion.Config()))},
    "log_completion",
)


def parse_error(body: bytes) -> SubmissionError:
    with pytest.raises(SubmissionError) as caught:
        PARSER.parse(body)
    return caught.value


def test_a_valid_body() -> None:
    submission = PARSER.parse(b'{"user_id": "user123", "payload": {"a": [1, 2]}}')
    assert submission.user_id == "user123"
    assert submission.spec.name == "log_completion"
    assert submission.payload == {"a": [1, 2]}


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"", 400, "invalid_json"),
        (b"\xff\xfe", 400, "invalid_json"),
        (b'{"user_id": "a"', 400, "invalid_json"),
        (b'{"user_id": "a"} trailing', 400, "invalid_json"),
        (b"null", 400, "invalid_body"),
        (b"42", 400, "invalid_body"),
        (b'"user_id"', 400, "invalid_body"),
        (b"[]", 400, "invalid_body"),
        (b'{"user_id": 1e400}', 422, "invalid_request"),
        (b'{"user_id": 12345678901234567890123456789}', 422, "invalid_request"),
        (b'{"user_id": true}', 422, "invalid_request"),
        (b'{"user_id": ["a"]}', 422, "invalid_request"),
        (b'{"user_id": "a", "task": 7}', 422, "invalid_request"),
        (b'{"user_id": "a", "task": ""}', 422, "invalid_request"),
        (b'{"user_id": "\\u0000"}', 422, "invalid_request"),
        (b'{"user_id": "a\\u001bb"}', 422, "invalid_request"),
        (b'{"user_id": "' + b"x" * 300 + b'"}', 422, "invalid_request"),
    ],
)
def test_bad_bodies(body: bytes, status: int, code: str) -> None:
    error = parse_error(body)
    assert (error.status, error.code) == (status, code)
    assert error.message
    json.dumps(error.body())  # always serialisable


def test_deep_nesting_is_refused_not_a_crash() -> None:
    body = b'{"user_id": "a", "payload": ' + b'{"x": ' * 10_000 + b"1" + b"}" * 10_001
    assert parse_error(body).status == 400


def test_duplicate_keys_keep_the_last_value() -> None:
    assert PARSER.parse(b'{"user_id": "a", "user_id": "b"}').user_id == "b"


def test_unicode_user_ids_are_fine() -> None:
    assert PARSER.parse('{"user_id": "用户-ü"}'.encode()).user_id == "用户-ü"
