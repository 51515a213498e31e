"""Plugins that tests write into a plugins_dir: a limiter, the delivery tests' handlers."""

from __future__ import annotations

from pathlib import Path

LIMITER_PLUGIN = """
from taskhub import Limiter, RatePolicy, hookimpl

class {cls}(Limiter):
    name = "{name}"
    lua = "{lua}"
    def policy(self):
        return RatePolicy(1, 1)

@hookimpl
def register_limiters(register):
    register({cls})
"""


def limiter_plugin(cls: str, name: str, lua: str = "return {}") -> str:
    """Source of a plugin module registering a limiter ``name`` with Lua ``lua``."""
    return LIMITER_PLUGIN.format(cls=cls, name=name, lua=lua)


# Handlers for delivery tests. Each records what it needs in its worker's working
# directory, so a test can steer one worker (a flag file) without touching another.
DELIVERY_HANDLERS = """
import asyncio
import time
from pathlib import Path

from taskhub import RetryLater, Task, TaskHandler, hookimpl


class Sleepy(TaskHandler):
    '''Sleeps payload["seconds"]; not at all where fast.flag exists.'''

    name = "sleepy"

    async def run(self, task: Task) -> str:
        if not Path("fast.flag").exists():
            await asyncio.sleep((task.payload or {}).get("seconds", 0))
        return "slept"


class Flaky(TaskHandler):
    '''Fails its first two attempts; notes when each attempt started.'''

    name = "flaky"

    async def run(self, task: Task) -> int:
        with open(f"attempts-{task.job_id}", "a") as times:
            times.write(f"{time.time()}\\n")
        if task.attempt < 3:
            raise ConnectionError(f"upstream down (attempt {task.attempt})")
        return task.attempt


class Later(TaskHandler):
    '''Asks to run again in payload["delay"] seconds, once.'''

    name = "later"

    async def run(self, task: Task) -> float:
        if task.attempt == 1:
            raise RetryLater(delay=task.payload["delay"], reason="not ready yet")
        return time.time()


class Broken(TaskHandler):
    '''Fails while broken.flag exists here.'''

    name = "broken"

    async def run(self, task: Task) -> str:
        if Path("broken.flag").exists():
            raise ValueError("boom")
        return "fixed"


class Deaf(TaskHandler):
    '''Ignores its first cancellation (an abort) and sleeps on; notes each attempt.'''

    name = "deaf"

    async def run(self, task: Task) -> str:
        with open(f"attempts-{task.job_id}", "a") as times:
            times.write(f"{time.time()}\\n")
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            pass
        await asyncio.sleep(3600)
        return "never"


@hookimpl
def register_handlers(register):
    for handler in (Sleepy, Flaky, Later, Broken, Deaf):
        register(handler)
"""


def delivery_plugins(directory: Path) -> str:
    """A plugins_dir holding DELIVERY_HANDLERS; returns its path for the config."""
    plugins = directory / "plugins"
    plugins.mkdir(parents=True, exist_ok=True)
    (plugins / "delivery_handlers.py").write_text(DELIVERY_HANDLERS)
    return str(plugins)


# The tasks section that names every delivery handler (flaky and broken with retries).
DELIVERY_TASKS = {
    "log_completion": {},
    "sleepy": {},
    "flaky": {"retries": 3, "retry_delay": 0.4, "retry_backoff": 10},
    "later": {"retries": 2},
    "broken": {"retries": 2, "retry_delay": 0.1},
}
