"""Exponential backoff with full jitter, bounded by a deadline."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    """`max_retries` counts retries after the first attempt (stamina's `attempts` minus one)."""

    max_retries: int
    wait_initial: float
    wait_max: float

    def __post_init__(self) -> None:
        if self.max_retries < 0 or self.wait_initial < 0 or self.wait_max < 0:
            raise ValueError("max_retries, wait_initial and wait_max must be >= 0")

    def ceiling(self, retry: int) -> float:
        """The exclusive upper bound of the jittered delay before retry number `retry` (0-based)."""
        # 2**retry overflows float for huge retry counts; the cap is reached long before.
        return min(self.wait_max, self.wait_initial * 2.0 ** min(retry, 64))

    def delay(
        self, retry: int, u: float, now: float, deadline: float, retry_after: float | None = None
    ) -> float | None:
        """Seconds to wait before retry number `retry`, or None when no retry should happen.

        `u` is uniform in [0, 1). A provider's retry-after is a floor. None means: retries are
        used up, or the wait would reach past the deadline.
        """
        if retry >= self.max_retries:
            return None
        wait = u * self.ceiling(retry)
        if retry_after is not None:
            wait = max(wait, retry_after)
        if now + wait >= deadline:
            return None
        return wait
