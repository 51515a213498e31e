"""Which Redis a parametrized test runs on: the shared single one, the local cluster, or memory."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis

from taskhub.config.models import RedisSettings
from taskhub.store.clients import connect
from tests.support.configs import config_dict
from tests.support.namespaces import Namespace


def config_on(kind: str, ns: Namespace, request: pytest.FixtureRequest) -> dict[str, Any]:
    """``config_dict`` on the ``single`` shared Redis or on the ``cluster``."""
    if kind == "cluster":
        config = config_dict(ns, request.getfixturevalue("cluster").url)
        config["redis"]["cluster"] = True
        return config
    return config_dict(ns, request.getfixturevalue("redis_url"))


def settings_on(kind: str, request: pytest.FixtureRequest) -> RedisSettings:
    """Redis settings for the ``single`` shared Redis, the ``cluster``, or ``memory``."""
    if kind == "cluster":
        return RedisSettings(url=request.getfixturevalue("cluster").url, cluster=True)
    if kind == "memory":
        return RedisSettings(url=f"memory://{request.node.nodeid}")
    return RedisSettings(url=request.getfixturevalue("redis_url"))


def client_on(kind: str, request: pytest.FixtureRequest) -> aioredis.Redis:
    """A client on the ``single`` shared Redis, the ``cluster``, or ``memory``."""
    return connect(settings_on(kind, request))
