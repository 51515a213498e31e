"""``file_log``: append one line per completion to a file, off the event loop, in batches.

``emit`` queues the line and waits until it is written, so a job is only marked
complete once its line is in the file. One writer task drains everything that
queued up meanwhile with a single write in a worker thread, so many concurrent
jobs cost one system call, not one each.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import IO

from pydantic import Field

from taskhub import Completion, Options, Sink, hookimpl
from taskhub.builtin.sinks.formatting import completion_line


class FileLog(Sink):
    name = "file_log"

    class Config(Options):
        path: str = Field(
            "task.log",
            min_length=1,
            description="the file completions are appended to, relative to the working directory",
        )
        fsync: bool = Field(False, description="fsync after each batch of lines: durable, slower")

    config: Config

    def __init__(self, config: Options) -> None:
        super().__init__(config)
        self._file: IO[str] | None = None
        self._pending: list[tuple[str, asyncio.Future[None]]] = []
        self._wakeup = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closing = False

    async def open(self) -> None:
        self._file = await asyncio.to_thread(open, self.config.path, "a", encoding="utf-8")
        self._writer = asyncio.create_task(self._write_batches(), name="file_log-writer")

    async def emit(self, completion: Completion) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((completion_line(completion) + "\n", done))
        self._wakeup.set()
        await done

    async def _write_batches(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            batch, self._pending = self._pending, []
            if batch:
                await self._write_batch(batch)
            if self._closing and not self._pending:
                return

    async def _write_batch(self, batch: list[tuple[str, asyncio.Future[None]]]) -> None:
        try:
            await asyncio.to_thread(self._write, "".join(line for line, _ in batch))
        except Exception as exc:
            for _, done in batch:
                if not done.done():
                    done.set_exception(exc)
        else:
            for _, done in batch:
                if not done.done():
                    done.set_result(None)

    def _write(self, text: str) -> None:
        assert self._file is not None
        self._file.write(text)
        self._file.flush()
        if self.config.fsync:
            os.fsync(self._file.fileno())

    async def close(self) -> None:
        if self._writer is not None:
            self._closing = True  # the writer drains what is queued, then returns
            self._wakeup.set()
            await self._writer
        if self._file is not None:
            await asyncio.to_thread(self._file.close)


@hookimpl
def register_sinks(register: Callable[[type[Sink]], None]) -> None:
    register(FileLog)
