"""Concurrent texts share one forward pass: a micro-batcher in front of a blocking batch encoder
that runs on one worker thread.

While a batch runs, new texts queue; when it ends, everything queued (up to `max_batch`) goes in
the next one. Nothing lingers on a timer: an idle worker starts at once (texts submitted in the
same event-loop turn still share the pass), a busy one collects while it works. Lookups come
first: background texts (a store's) run only in a batch of their own when no lookup waits, are
refused (EmbedderBusy) beyond `max_background` queued, and given up (EmbedderBusy) after
`background_max_age`, so that stores never delay a lookup by more than one small batch.
With `max_busy` < 1 the worker's passes take at most that share of a core (averaged over about a
second): beyond it lookups are told to skip (an infinite expected wait) and background work is
refused, so the embedder cannot starve the event loop and the rest of the process of CPU.

`expected_wait()` is how long a lookup submitted now would queue: the rest of the running pass and
the share of the texts ahead of it, from moving averages of the cost per pass and per text, so the
cache can skip the semantic tier instead of queueing (see application/semantic_cache.py).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from adapters.process.worker import WorkerThread
from application.ports import EmbedderBusy

BUSY_WINDOW = 1.0  # seconds over which utilisation is averaged
Encode = Callable[[list[str]], list[list[float]]]


@dataclass(frozen=True, slots=True)
class _Pending:
    text: str
    future: asyncio.Future[list[float]]


class MicroBatcher:
    def __init__(
        self,
        encode: Encode,
        worker: WorkerThread,
        *,
        max_batch: int = 32,
        max_background: int = 256,
        background_batch: int = 8,
        background_max_age: float = 5.0,
        max_busy: float = 1.0,
    ) -> None:
        self._encode = encode
        self._worker = worker
        self._max_batch = max_batch
        self._max_background = max_background
        self._background_batch = background_batch
        self._background_max_age = background_max_age
        self._lookups: deque[_Pending] = deque()
        self._background: deque[_Pending] = deque()
        self._running: asyncio.Task[None] | None = None
        self._run_started = 0.0
        self._run_texts = 0
        self._max_busy = max_busy
        self._busy = 0.0  # seconds of passes, decaying with BUSY_WINDOW
        self._busy_at = time.monotonic()
        # moving averages of a pass: seconds = per_pass + per_text * texts (first guesses:
        # MiniLM on one core of a 2-vCPU VM)
        self.per_pass = 0.008
        self.per_text = 0.008
        self.batches = 0
        self.texts = 0

    async def embed(self, texts: Sequence[str], background: bool = False) -> list[list[float]]:
        loop = asyncio.get_running_loop()
        queue = self._background if background else self._lookups
        if background:
            _drop_done(queue)
            if len(queue) + len(texts) > self._max_background:
                raise EmbedderBusy(f"{len(queue)} texts already wait for the embedder")
            if self.utilisation() >= self._max_busy:
                raise EmbedderBusy("the embedder used its share of the CPU")
        pending = [_Pending(text, loop.create_future()) for text in texts]
        queue.extend(pending)
        self._kick()
        try:
            if not background:
                return [await p.future for p in pending]
            try:
                async with asyncio.timeout(self._background_max_age):
                    return [await p.future for p in pending]
            except TimeoutError:
                raise EmbedderBusy("waited too long behind lookups") from None
        finally:
            for p in pending:  # cancelled (a lookup's budget ran out): its texts are skipped
                p.future.cancel()

    def expected_wait(self) -> float:
        """Seconds a lookup submitted now would queue before its pass starts: the rest of the
        running pass, and the passes of the texts ahead of it beyond one batch (those within
        one batch share its pass and add their share to it). 0 when the worker is idle."""
        if self.utilisation() >= self._max_busy:
            return math.inf
        queued = sum(1 for p in self._lookups if not p.future.done())
        wait = self.per_text * queued
        if self._running is not None:
            run = self.per_pass + self.per_text * self._run_texts
            wait += max(0.0, self._run_started + run - time.monotonic())
        return wait

    def utilisation(self) -> float:
        """The share of recent time (about BUSY_WINDOW) the worker spent in passes."""
        return self._decayed(time.monotonic()) / BUSY_WINDOW

    def _decayed(self, now: float) -> float:
        self._busy *= math.exp(-(now - self._busy_at) / BUSY_WINDOW)
        self._busy_at = now
        return self._busy

    def fail_all(self, error: BaseException) -> None:
        for queue in (self._lookups, self._background):
            while queue:
                future = queue.popleft().future
                if not future.done():
                    future.set_exception(error)

    def _kick(self) -> None:
        if self._running is None and (self._lookups or self._background):
            self._running = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        try:
            await asyncio.sleep(0)  # texts submitted in this loop turn join the pass
            while batch := self._next_batch():
                await self._pass(batch)
        finally:
            self._running = None
        self._kick()  # in case the loop above ended by an exception while texts wait

    def _next_batch(self) -> list[_Pending]:
        return _take(self._lookups, self._max_batch) or _take(
            self._background, self._background_batch
        )

    async def _pass(self, batch: list[_Pending]) -> None:
        self._run_started, self._run_texts = time.monotonic(), len(batch)
        try:
            vectors = await self._worker.run(self._encode, [p.text for p in batch])
        except Exception as error:
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(error)
            return
        now = time.monotonic()
        took = now - self._run_started
        self._busy = self._decayed(now) + took
        self._learn(len(batch), took)
        for p, vector in zip(batch, vectors, strict=True):
            if not p.future.done():
                p.future.set_result(vector)

    def _learn(self, texts: int, seconds: float) -> None:
        """Splits a pass's time into a fixed and a per-text part: a batch of one teaches the
        fixed part (given the per-text one), a larger batch the per-text part."""
        self.batches += 1
        self.texts += texts
        if texts == 1:
            self.per_pass += 0.2 * (max(seconds - self.per_text, 0.0) - self.per_pass)
        else:
            self.per_text += 0.2 * (max(seconds - self.per_pass, 0.0) / texts - self.per_text)


def _drop_done(queue: deque[_Pending]) -> None:
    while queue and queue[0].future.done():
        queue.popleft()


def _take(queue: deque[_Pending], limit: int) -> list[_Pending]:
    batch: list[_Pending] = []
    while queue and len(batch) < limit:
        pending = queue.popleft()
        if not pending.future.done():  # cancelled while queued
            batch.append(pending)
    return batch
