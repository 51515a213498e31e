"""``console``: log each completion through ``logging`` (logger ``taskhub.completions``)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from taskhub import Completion, Sink, hookimpl
from taskhub.builtin.sinks.formatting import completion_line

logger = logging.getLogger("taskhub.completions")


class Console(Sink):
    name = "console"

    async def emit(self, completion: Completion) -> None:
        logger.info("%s", completion_line(completion))


@hookimpl
def register_sinks(register: Callable[[type[Sink]], None]) -> None:
    register(Console)
