"""Graceful shutdown for the calls in flight, shared by both driving adapters: each call is
counted by `Drain.call()` and its work runs inside `Drain.scope()` (one or several in turn, never
nested); at shutdown the server waits for the calls (`settle`) and `cut`s the scopes still
running when the grace is nearly over, so their clients get a proper error (ShuttingDown: gRPC
UNAVAILABLE, HTTP 503 or an SSE error event), never an empty reply."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar

from domain.errors import ShuttingDown

_SCOPE: ContextVar[asyncio.Timeout | None] = ContextVar("drain_scope", default=None)


def cut_here() -> bool:
    """Whether the drain scope this code runs in has been cut: the cancellation it sees is the
    shutdown's (its client gets UNAVAILABLE), not its client's or its deadline's."""
    scope = _SCOPE.get()
    return scope is not None and scope.expired()


def cut_margin(grace: float) -> float:
    """What a server keeps of SHUTDOWN_GRACE to answer the calls it cuts and close: the cut
    comes two margins before the grace ends (aiohttp waits up to its shutdown timeout twice)."""
    return min(0.5, grace / 10)


class Drain:
    def __init__(self) -> None:
        self._scopes: set[asyncio.Timeout] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._cut = False
        self.in_flight = 0

    @contextmanager
    def call(self) -> Iterator[None]:
        """Counts a call in flight, from its start to its last byte."""
        self.in_flight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self.in_flight -= 1
            if not self.in_flight:
                self._idle.set()

    @asynccontextmanager
    async def scope(self) -> AsyncIterator[None]:
        """Runs (part of) a call; raises ShuttingDown in it when `cut`."""
        timeout = asyncio.timeout(None)
        try:
            async with timeout:
                if self._cut:
                    timeout.reschedule(asyncio.get_running_loop().time())
                self._scopes.add(timeout)
                _SCOPE.set(timeout)
                try:
                    yield
                finally:
                    # not reset(token): a stream's generator may be closed from another task
                    # (another Context), where reset raises; scopes are never nested
                    _SCOPE.set(None)
                    self._scopes.discard(timeout)
        except TimeoutError:
            if timeout.expired():
                raise ShuttingDown() from None
            raise

    async def settle(self, seconds: float) -> None:
        """Waits up to `seconds` for every call in flight to end, then cuts the rest."""
        try:
            async with asyncio.timeout(max(0.0, seconds)):
                await self._idle.wait()
        except TimeoutError:
            pass
        self.cut()

    def cut(self) -> None:
        self._cut = True
        now = asyncio.get_running_loop().time()
        for timeout in self._scopes:
            timeout.reschedule(now)
