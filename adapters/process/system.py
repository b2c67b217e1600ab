"""Time and randomness from the real world."""

from __future__ import annotations

import asyncio
import random
import resource
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


def raise_file_limit() -> tuple[int, int]:
    """Raises the soft RLIMIT_NOFILE to the hard one (what an unprivileged process may do);
    returns (soft, hard) as they are now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft, hard
