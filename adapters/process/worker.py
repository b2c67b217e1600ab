"""One worker thread for a resource whose calls block and must not run two at a time (an SQLite
connection, a Qdrant Edge shard, a model): the event loop awaits them, they run in order.

`nice` > 0 lowers the thread's scheduling priority (Linux keeps a nice value per thread): work
that may wait, such as the local embedder's passes, then gets the CPU the event loop leaves, and
an event loop with requests to serve takes the core back at once."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)


def _lower_priority(name: str, nice: int) -> None:
    try:  # who=0: the calling thread (a per-thread value on Linux)
        os.setpriority(os.PRIO_PROCESS, 0, min(19, os.getpriority(os.PRIO_PROCESS, 0) + nice))
    except (AttributeError, OSError) as error:  # not Linux, or a sandbox that forbids it
        log.warning("%s thread keeps its priority (%s)", name, type(error).__name__)


class WorkerThread:
    def __init__(self, name: str, closed_message: str, *, nice: int = 0) -> None:
        self._executor = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix=name,
            initializer=partial(_lower_priority, name, nice) if nice > 0 else None,
        )
        self._closed_message = closed_message
        self.closed = False

    def call(self, function: Callable[..., T], *args: object) -> T:
        """Runs `function` on the thread and waits for it, blocking (for set-up in __init__)."""
        return self._executor.submit(function, *args).result()

    def submit(self, function: Callable[..., object], *args: object, **kwargs: object) -> None:
        """Queues background work nobody awaits; nothing once closed."""
        if not self.closed:
            self._executor.submit(function, *args, **kwargs)

    async def run(self, function: Callable[..., T], *args: object) -> T:
        """Raises RuntimeError (the closed message) once closed."""
        if self.closed:
            raise RuntimeError(self._closed_message)
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, partial(function, *args)
        )

    async def close(self, last: Callable[[], object] | None = None) -> None:
        """Runs `last` (closing the resource) after the queued calls, then lets the thread end."""
        if self.closed:
            return
        self.closed = True
        try:
            if last is not None:
                await asyncio.get_running_loop().run_in_executor(self._executor, last)
        finally:
            self._executor.shutdown(wait=False)

    def stop(self) -> None:
        """Closes without waiting: queued calls are cancelled."""
        self.closed = True
        self._executor.shutdown(wait=False, cancel_futures=True)
