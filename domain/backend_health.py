"""What to say about a cache backend that fails: one line when it goes down, one when it comes
back, and while it stays down at most one summary per `summary_every` seconds, never one line
per failed call (a down Redis under load would otherwise write thousands of lines a second)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class HealthEvent(Enum):
    WENT_DOWN = "went_down"
    STILL_DOWN = "still_down"
    CAME_BACK = "came_back"


@dataclass(frozen=True, slots=True)
class Report:
    event: HealthEvent
    failures: int  # failed calls since it went down (came back), or since the last report
    reason: str  # the latest failure's reason ("" when it came back)


@dataclass(slots=True)
class BackendHealth:
    summary_every: float = 60.0
    up: bool | None = None  # None: no call yet
    _failures: int = 0
    _total: int = 0
    _last_report: float = field(default=0.0)

    def failed(self, now: float, reason: str) -> Report | None:
        """A call failed at `now` (monotonic seconds): a report to log, or None."""
        self._failures += 1
        self._total += 1
        if self.up is not False:
            self.up = False
            self._last_report = now
            self._failures = 0
            self._total = 1
            return Report(HealthEvent.WENT_DOWN, 1, reason)
        if now - self._last_report >= self.summary_every:
            failures, self._failures, self._last_report = self._failures, 0, now
            return Report(HealthEvent.STILL_DOWN, failures, reason)
        return None

    def succeeded(self) -> Report | None:
        """A call succeeded: a report when the backend was down."""
        was_down = self.up is False
        self.up = True
        if not was_down:
            return None
        total, self._failures, self._total = self._total, 0, 0
        return Report(HealthEvent.CAME_BACK, total, "")
