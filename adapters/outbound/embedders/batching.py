"""Concurrent texts share one forward pass: a micro-batcher in front of a blocking batch encoder
that runs on one worker thread.

While a batch runs, new texts queue; when it ends, everything queued (up to `max_batch`) goes in
the next one. Nothing lingers on a timer: an idle worker starts at once (texts submitted in the
same event-loop turn still share the pass), a busy one collects while it works. Lookups come
first: background texts (the cache's index backlog) run only when no lookup waits, in passes
sized to take about `background_pass` seconds, so that a lookup arriving meanwhile waits at most
that long behind them, and within half the CPU share below, so that they never make a lookup
wait for a pause. Nothing is refused: the caller bounds how long it waits.

With `max_busy` < 1 the worker's passes take at most that share of a core (their CPU time,
averaged over about a second): past it the worker pauses before its next pass, so the embedder
cannot starve the event loop and the rest of the process of CPU. Texts queue meanwhile and share
the next pass.

`expected_wait()` is how long a lookup's text submitted now would take to get its vector: the
rest of the running pass, the pause the share imposes, and the passes of the texts queued ahead
of it and its own, from moving averages of the cost per pass and per text, so that the cache can
skip the semantic tier when that is beyond its budget (see application/semantic_cache.py).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass

from adapters.process.worker import WorkerThread

BUSY_WINDOW = 1.0  # seconds over which the CPU share is averaged
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
        background_pass: float = 0.05,
        max_busy: float = 1.0,
    ) -> None:
        self._encode = encode
        self._worker = worker
        self._max_batch = max_batch
        self._background_pass = background_pass
        self._max_busy = max_busy
        self._lookups: deque[_Pending] = deque()
        self._background: deque[_Pending] = deque()
        self._running: asyncio.Task[None] | None = None
        self._lookup_came = asyncio.Event()
        self._pass_ends: float | None = None  # expected end of the pass running now
        self._busy = 0.0  # CPU seconds of passes, decaying with BUSY_WINDOW
        self._busy_at = time.monotonic()
        # moving averages of a pass's wall time: per_pass + per_text * texts (first guesses:
        # MiniLM on one core of a 2-vCPU VM)
        self.per_pass = 0.008
        self.per_text = 0.008
        self.batches = 0
        self.texts = 0

    async def embed(self, texts: Sequence[str], background: bool = False) -> list[list[float]]:
        loop = asyncio.get_running_loop()
        pending = [_Pending(text, loop.create_future()) for text in texts]
        (self._background if background else self._lookups).extend(pending)
        if not background:
            self._lookup_came.set()
        self._kick()
        try:
            return [await p.future for p in pending]
        finally:
            for p in pending:  # cancelled (a lookup's budget ran out): its texts are skipped
                p.future.cancel()

    def expected_wait(self) -> float:
        """Seconds until a lookup's text submitted now has its vector: the rest of the running
        pass, the pause the CPU share imposes, then the passes of the lookup texts ahead of it
        and its own (past the first, each paced by the share when the share is reached)."""
        now = time.monotonic()
        wait = max(0.0, self._pass_ends - now) if self._pass_ends is not None else 0.0
        pause = self._pause(now)
        ahead = sum(1 for p in self._lookups if not p.future.done()) + 1
        passes = math.ceil(ahead / self._max_batch)
        first = self.per_pass + self.per_text * min(ahead, self._max_batch)
        rest = (passes - 1) * self.per_pass + self.per_text * max(0, ahead - self._max_batch)
        if pause > 0:
            rest /= self._max_busy
        return wait + pause + first + rest

    def utilisation(self) -> float:
        """The share of a core the passes used recently (about BUSY_WINDOW)."""
        return self._decayed(time.monotonic()) / BUSY_WINDOW

    def _pause(self, now: float, share: float | None = None) -> float:
        """How long the worker must rest before its next pass to stay within `share` (its
        share for lookups, by default)."""
        allowed = (self._max_busy if share is None else share) * BUSY_WINDOW
        busy = self._decayed(now)
        return BUSY_WINDOW * math.log(busy / allowed) if busy > allowed else 0.0

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
            while batch := await self._next_batch():
                await self._pass(batch)
        finally:
            self._running = None
        self._kick()  # in case the loop above ended by an exception while texts wait

    async def _next_batch(self) -> list[_Pending]:
        """The next pass's texts, once the share allows it: lookups within the whole share;
        background texts within half of it, so that they never make a lookup wait for a pause
        (a background pass is short), and only while no lookup waits."""
        while True:
            now = time.monotonic()
            if any(not p.future.done() for p in self._lookups):
                if (pause := self._pause(now)) > 0:
                    await asyncio.sleep(pause)
                    continue
                return _take(self._lookups, self._max_batch)
            self._lookups.clear()  # all cancelled
            if not any(not p.future.done() for p in self._background):
                self._background.clear()
                return []
            if (pause := self._pause(now, self._max_busy / 2)) > 0:
                self._lookup_came.clear()
                with suppress(TimeoutError):  # a lookup wakes the worker early
                    async with asyncio.timeout(pause):
                        await self._lookup_came.wait()
                continue
            fit = int((self._background_pass - self.per_pass) / max(self.per_text, 1e-6))
            return _take(self._background, min(self._max_batch, max(1, fit)))

    async def _pass(self, batch: list[_Pending]) -> None:
        started = time.monotonic()
        self._pass_ends = started + self.per_pass + self.per_text * len(batch)
        try:
            vectors, cpu = await self._worker.run(_timed, self._encode, [p.text for p in batch])
        except Exception as error:
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(error)
            return
        finally:
            self._pass_ends = None
        now = time.monotonic()
        self._busy = self._decayed(now) + cpu
        self._learn(len(batch), now - started)
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


def _timed(encode: Encode, texts: list[str]) -> tuple[list[list[float]], float]:
    """The vectors and the CPU seconds the worker thread spent on them (a pass's wall time
    also counts the time other threads held the core)."""
    started = time.thread_time()
    vectors = encode(texts)
    return vectors, time.thread_time() - started


def _take(queue: deque[_Pending], limit: int) -> list[_Pending]:
    batch: list[_Pending] = []
    while queue and len(batch) < limit:
        pending = queue.popleft()
        if not pending.future.done():  # cancelled while queued
            batch.append(pending)
    return batch
