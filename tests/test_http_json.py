"""The Sanic adapter's response encodes headers exactly as Sanic would, only faster for plain
ASCII; the httptools server sends the same head, byte for byte."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sanic.helpers import STATUS_CODES
from sanic.response import HTTPResponse

from taskhub.builtin.httptools.wire import head
from taskhub.builtin.sanic.response import FastHeadersResponse
from taskhub.http import JSON, HttpResponse


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


def httptools_head(status: int, headers: dict[str, str]) -> bytes:
    return head(HttpResponse(status, b"{}", headers, JSON), True, 2)


def sanic_head(status: int, headers: dict[str, str]) -> bytes:
    """The head Sanic's adapter sends: the API's headers, then the framing, in its order."""
    *api, content_type = sanic_headers(status, headers)
    framing = [(b"content-length", b"2"), (b"connection", b"keep-alive"), content_type]
    lines = b"".join(b"%b: %b\r\n" % pair for pair in [*api, *framing])
    return b"HTTP/1.1 %d %b\r\n" % (status, STATUS_CODES[status]) + lines + b"\r\n"


def test_the_httptools_server_sanitises_tricky_values_as_sanic_does():
    headers = {f"X-{i}": value for i, value in enumerate(TRICKY)} | {"Bad\r\nName": "v"}
    assert httptools_head(429, dict(headers)) == sanic_head(429, dict(headers))


@given(
    st.dictionaries(
        st.text(min_size=1, max_size=8).filter(lambda name: name.lower() != "content-type"),
        st.text(max_size=12),
        max_size=4,
    )
)
def test_the_httptools_server_sends_the_headers_sanic_sends(headers: dict[str, str]):
    try:
        expected = sanic_head(200, dict(headers))
    except UnicodeEncodeError:  # Sanic refuses non-ASCII names; so must the other server
        with pytest.raises(UnicodeEncodeError):
            httptools_head(200, dict(headers))
        return
    assert httptools_head(200, dict(headers)) == expected
