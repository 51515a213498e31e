"""``log_completion``: the seed's task. It does no work of its own; the sinks record it."""

from __future__ import annotations

from collections.abc import Callable

from taskhub import Task, TaskHandler, hookimpl


class LogCompletion(TaskHandler):
    """Completes at once; each sink then records "Task completed for user ... at ..."."""

    name = "log_completion"

    async def run(self, task: Task) -> None:
        return None


@hookimpl
def register_handlers(register: Callable[[type[TaskHandler]], None]) -> None:
    register(LogCompletion)
