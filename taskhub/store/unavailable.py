"""Telling "Redis cannot serve us right now" (an outage: 503, logged once) from a bug."""

from __future__ import annotations

import re
from pathlib import Path

from redis import exceptions as rx

from taskhub.errors import BackendUnavailable

_UNAVAILABLE_TYPES: tuple[type[BaseException], ...] = (
    rx.ConnectionError,  # includes AuthenticationError and BusyLoadingError
    rx.TimeoutError,
    rx.ReadOnlyError,  # a replica during failover
    rx.ClusterDownError,
    rx.TryAgainError,
    rx.MasterDownError,
    # redis-py's cluster client has no node for a slot: its map is being read again.
    rx.SlotNotCoveredError,
    # An ACL user refused a command or key: like a refused login (AuthenticationError,
    # above), for an operator to fix, and nothing a retry now would change; 503, not 500.
    rx.NoPermissionError,
    OSError,
)
_UNAVAILABLE_REPLIES = (
    "OOM ",
    "LOADING ",
    "MASTERDOWN ",
    "BUSY ",
    "CLUSTERDOWN ",
    "TRYAGAIN ",
    # A cluster redirect still there after the router followed one: the slot map is in
    # flux (a failover or resharding spreading), so retry shortly rather than a 500.
    "MOVED ",
    "ASK ",
    "NOPERM ",  # as NoPermissionError, from the pipeline's own reader
    "READONLY ",  # as ReadOnlyError, from the pipeline's own reader: a demoted master
)
# redis-py's cluster client, reading the slot map, found nodes that do not yet serve every
# slot (a cluster coming back); without a node at all, it raises its own exception with
# the last node's error as the cause, judged as that error is.
_CLUSTER_FORMING = "All slots are not covered"
# uvloop raises this (not an OSError) when redis-py writes to a connection that Redis
# closed under it, e.g. after CLIENT KILL or a restart; plain asyncio fails on the read.
_CLOSED_TRANSPORT = re.compile(r"unable to perform operation on <\w+ .*>; the handler is closed")


# redis-py's cluster client disconnects every connection of every node when a command
# meets CLUSTERDOWN or reading the slot map fails, those in use by other calls too (a
# cluster coming back): such a call then writes to, or reads from, a connection whose
# stream is gone, and fails with this, raised in redis-py's connection module.
_GONE_STREAM = re.compile(r"'NoneType' object has no attribute '\w+'")
_REDIS_CONNECTION = ("redis", "asyncio", "connection.py")


def _stream_gone_under_redis_py(exc: AttributeError) -> bool:
    if _GONE_STREAM.fullmatch(str(exc)) is None or exc.__traceback__ is None:
        return False
    innermost = exc.__traceback__
    while innermost.tb_next is not None:
        innermost = innermost.tb_next
    return Path(innermost.tb_frame.f_code.co_filename).parts[-3:] == _REDIS_CONNECTION


def is_unavailable(exc: BaseException) -> bool:
    """True for errors that mean "Redis cannot serve us right now", as opposed to bugs."""
    if isinstance(exc, BackendUnavailable):  # a component that already said so
        return True
    if isinstance(exc, _UNAVAILABLE_TYPES):
        return True
    if isinstance(exc, RuntimeError):
        return _CLOSED_TRANSPORT.fullmatch(str(exc)) is not None
    if isinstance(exc, AttributeError):
        return _stream_gone_under_redis_py(exc)
    if isinstance(exc, rx.RedisClusterException):
        if str(exc).startswith(_CLUSTER_FORMING):
            return True
        return exc.__cause__ is not None and is_unavailable(exc.__cause__)
    return isinstance(exc, rx.ResponseError) and str(exc).startswith(_UNAVAILABLE_REPLIES)


def why_unavailable(exc: BaseException) -> str:
    """For a person: a command the ACL user may not send is not an unreachable server."""
    if isinstance(exc, rx.NoPermissionError) or str(exc).startswith("NOPERM "):
        text = str(exc).removeprefix("NOPERM ")
        return (
            f"Redis refused a command to this user: NOPERM {text}. Its ACL rule lacks "
            "a command or key pattern taskhub needs (see the docs' 'Running on managed "
            "and self-hosted Redis')"
        )
    return f"Redis is unreachable: {exc or type(exc).__name__}"
