"""Cancelling an HTTP exchange exactly once, so its connection always goes back to the pool.

httpcore releases a connection in cleanup code that runs after the first `CancelledError`; a
second cancellation arriving during that cleanup (two timeouts expiring at the same instant, a
client leaving as the deadline passes) interrupts it and the connection stays ACTIVE for ever:
after `UPSTREAM_MAX_CONNECTIONS` such calls every later call waits for a free connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
Release = Callable[[T], Coroutine[Any, Any, None]]

# Exchanges whose caller has left finish their cleanup here, referenced until done.
_detached: set[asyncio.Future[Any]] = set()


async def cancelled_once(call: Coroutine[Any, Any, T], release: Release[T] | None = None) -> T:
    """Runs `call` in a task of its own. However many cancellations reach the caller, the task
    gets one, and its cleanup runs to the end without the caller waiting for it. `release`
    disposes of a result that arrives after the caller was cancelled."""
    task = asyncio.ensure_future(call)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.cancel()
        _detach(task, release)
        raise


def _detach(task: asyncio.Future[T], release: Release[T] | None) -> None:
    def settle(done: asyncio.Future[T]) -> None:
        _detached.discard(done)
        if done.cancelled() or done.exception() is not None:
            return  # retrieved: nobody is left to report it to
        if release is not None:
            _detach(asyncio.ensure_future(release(done.result())), None)

    _detached.add(task)
    task.add_done_callback(settle)
