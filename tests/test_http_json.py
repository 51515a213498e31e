"""The Sanic adapter's response encodes headers exactly as Sanic would, only faster for plain
ASCII."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from sanic.response import HTTPResponse

from taskhub.builtin.sanic.response import FastHeadersResponse
from taskhub.http import JSON


def json_response(status: int, body: dict, headers: dict[str, str]) -> FastHeadersResponse:
    return FastHeadersResponse(b"{}", status=status, headers=headers, content_type=JSON)


TRICKY = ["1", "", "a\r\nSet-Cookie: x=1", "nul\x00byte", "tab\there", "é", "\udcff", " spaced "]


def sanic_headers(status: int, headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return list(
        HTTPResponse(b"", status=status, headers=headers, content_type=JSON).processed_headers
    )


def test_tricky_values_are_sanitised_as_sanic_does():
    headers = {f"X-{i}": value for i, value in enumerate(TRICKY)} | {"Bad\r\nName": "v"}
    ours = list(json_response(429, {}, dict(headers)).processed_headers)
    assert ours == sanic_headers(429, dict(headers))
    assert all(b"\r" not in name + value and b"\n" not in name + value for name, value in ours)


def test_no_content_type_without_a_body():
    assert list(json_response(204, {}, {"X-A": "1"}).processed_headers) == [(b"X-A", b"1")]


@given(st.dictionaries(st.text(min_size=1, max_size=8), st.text(max_size=12), max_size=4))
def test_any_headers_encode_as_sanic_encodes_them(headers: dict[str, str]):
    try:
        expected = sanic_headers(200, dict(headers))
    except UnicodeEncodeError:  # Sanic refuses non-ASCII names; so must we
        try:
            list(json_response(200, {}, dict(headers)).processed_headers)
        except UnicodeEncodeError:
            return
        raise AssertionError("a non-ASCII header name was accepted") from None
    assert list(json_response(200, {}, dict(headers)).processed_headers) == expected
