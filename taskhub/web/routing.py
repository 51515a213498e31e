"""Which handler answers a method and path: fixed paths, and paths with one parameter.

A parameter is the part of the path between a fixed prefix and an optional fixed
suffix, as sent (not percent-decoded). A ``segment`` parameter is one path
segment (no ``/``); a ``rest`` parameter may span segments. One trailing ``/`` is
ignored, so ``/health/`` is ``/health``. A path no route matches is a 404; a
path some route matches with another method is a 405 that lists the methods
that would be allowed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from taskhub.http import HttpRequest, HttpResponse

Handler = Callable[[HttpRequest], Awaitable[HttpResponse]]
ParamHandler = Callable[[HttpRequest, str], Awaitable[HttpResponse]]


@dataclass(frozen=True)
class ParamRoute:
    prefix: str
    suffix: str
    segment: bool  # one path segment; else anything, slashes included
    methods: dict[str, ParamHandler] = field(default_factory=dict)

    def match(self, path: str) -> str | None:
        if not path.startswith(self.prefix) or not path.endswith(self.suffix):
            return None
        end = len(path) - len(self.suffix)
        if end <= len(self.prefix):
            return None
        param = path[len(self.prefix) : end]
        if self.segment and "/" in param:
            return None
        return param


@dataclass(frozen=True, slots=True)
class Match:
    """What the router found: a handler (and its parameter), or the methods allowed."""

    handler: Handler | None = None
    param_handler: ParamHandler | None = None
    param: str = ""
    allowed: tuple[str, ...] = ()


class Router:
    def __init__(self) -> None:
        self._fixed: dict[str, dict[str, Handler]] = {}
        self._params: list[ParamRoute] = []

    def add(self, method: str, path: str, handler: Handler) -> None:
        self._fixed.setdefault(path, {})[method] = handler

    def add_param(
        self, method: str, prefix: str, handler: ParamHandler, suffix: str = "", *, segment: bool
    ) -> None:
        for route in self._params:
            if (route.prefix, route.suffix, route.segment) == (prefix, suffix, segment):
                route.methods[method] = handler
                return
        self._params.append(ParamRoute(prefix, suffix, segment, {method: handler}))

    def fixed(self, method: str, path: str) -> Handler | None:
        """The handler of a fixed path as sent, or None: one dict lookup each, for the
        request path's common case (``POST /task``) to skip building a :class:`Match`."""
        methods = self._fixed.get(path)
        return methods.get(method) if methods is not None else None

    def route(self, path: str) -> str | None:
        """The route template a request matches, as tracing names it (``/task/{param}``);
        None when nothing serves the path."""
        if len(path) > 1 and path.endswith("/"):
            path = path[:-1]
        if path in self._fixed:
            return path
        for route in self._params:
            if route.match(path) is not None:
                return f"{route.prefix}{{param}}{route.suffix}"
        return None

    def find(self, method: str, path: str) -> Match | None:
        """The handler for ``method`` on ``path``; a Match with only ``allowed`` when the
        path exists for other methods; None when nothing serves the path."""
        if len(path) > 1 and path.endswith("/"):
            path = path[:-1]
        fixed = self._fixed.get(path)
        if fixed is not None:
            handler = fixed.get(method)
            return Match(handler=handler) if handler else Match(allowed=tuple(sorted(fixed)))
        for route in self._params:
            param = route.match(path)
            if param is not None:
                param_handler = route.methods.get(method)
                if param_handler is None:
                    return Match(allowed=tuple(sorted(route.methods)))
                return Match(param_handler=param_handler, param=param)
        return None
