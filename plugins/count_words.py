"""Example task handler plugin: ``count_words`` counts the words in ``payload.text``.

Copy this file to start your own handler. Enable it by listing it under
``tasks:`` in your config (options other than ``type`` and the job options
``retries``, ``timeout``, ``retry_delay``, ``retry_backoff`` and ``heartbeat``
are the handler's own, validated by its ``Config``):

    tasks:
      log_completion: {}
      count_words:
        min_length: 3

then submit it:

    curl -X POST localhost:3000/task -H 'Content-Type: application/json' \\
         -d '{"user_id": "user123", "task": "count_words", "payload": {"text": "to be or not"}}'

``Payload`` is checked when the task is submitted, so a bad payload is a 422 and
never reaches the queue. ``run`` must be async and must not block the event
loop; what it returns is stored as the job's result.
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import BaseModel, ConfigDict, Field

from taskhub import Options, Task, TaskHandler, hookimpl


class Text(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(max_length=10_000)


class CountWords(TaskHandler):
    """Counts the words of at least ``min_length`` characters."""

    name = "count_words"
    Payload = Text

    class Config(Options):
        min_length: int = Field(1, ge=1, le=100, description="shortest word that counts")

    config: Config

    async def run(self, task: Task) -> dict[str, int]:
        words = [w for w in task.payload.text.split() if len(w) >= self.config.min_length]
        return {"words": len(words)}


@hookimpl
def register_handlers(register: Callable[[type[TaskHandler]], None]) -> None:
    register(CountWords)
