"""Time and randomness from the real world."""

from __future__ import annotations

import asyncio
import random
import time

from application.ports import Clock, RandomSource, Sleeper


class SystemClock(Clock):
    def now(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()


class AsyncioSleeper(Sleeper):
    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class SystemRandom(RandomSource):
    def __init__(self) -> None:
        self._random = random.Random()

    def random(self) -> float:
        return self._random.random()
