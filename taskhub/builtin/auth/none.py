"""``none``: no authentication, the default (as in the seed).

Its ``enabled`` is False, so servers skip authentication altogether: the request
path does no work for it, not even a call.
"""

from __future__ import annotations

from collections.abc import Callable

from taskhub import Authenticator, Headers, Principal, hookimpl

ANONYMOUS = Principal("anonymous")


class NoAuth(Authenticator):
    name = "none"
    enabled = False

    def authenticate(self, headers: Headers) -> Principal:
        return ANONYMOUS


@hookimpl
def register_authenticators(register: Callable[[type[Authenticator]], None]) -> None:
    register(NoAuth)
