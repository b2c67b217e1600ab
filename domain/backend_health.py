"""What to say about a cache backend that fails: one line when it goes down, one when it comes
back, and while it stays down at most one summary per `summary_every` seconds, never one line
per failed call (a down Redis under load would otherwise write thousands of lines a second).

A backend that flaps (a call times out on a busy host, the next one answers) would still write
two lines per failed call. So an outage that starts within `summary_every` of the last line
saying it came back (or flapped) is not reported on its own: such outages are counted and
said in one FLAPPING line at most every `summary_every` seconds. An unreported outage that
lasts until a summary is due is reported from then on like any other (STILL_DOWN, CAME_BACK)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class HealthEvent(Enum):
    WENT_DOWN = "went_down"
    STILL_DOWN = "still_down"
    CAME_BACK = "came_back"
    FLAPPING = "flapping"


@dataclass(frozen=True, slots=True)
class Report:
    event: HealthEvent
    failures: int  # failed calls since it went down (came back), or since the last report
    reason: str  # the latest failure's reason ("" when it came back)
    outages: int = 0  # FLAPPING: the outages since the last report, none of them reported


@dataclass(slots=True)
class BackendHealth:
    summary_every: float = 60.0
    up: bool | None = None  # None: no call yet
    _failures: int = 0  # failed calls since the last report
    _total: int = 0  # failed calls since the current outage began
    _reason: str = ""
    _last_report: float = field(default=float("-inf"))
    _quiet_until: float = field(default=float("-inf"))  # an outage before it is a flap
    _quiet: bool = False  # the current outage has not been reported
    _outages: int = 0  # flaps since the last report

    def failed(self, now: float, reason: str) -> Report | None:
        """A call failed at `now` (monotonic seconds): a report to log, or None."""
        self._failures += 1
        self._reason = reason
        if self.up is not False:
            self.up = False
            self._total = 1
            if now < self._quiet_until:
                self._quiet = True
                self._outages += 1
                return None
            self._quiet = False
            return self._report(now, Report(HealthEvent.WENT_DOWN, 1, reason))
        self._total += 1
        if now - self._last_report < self.summary_every:
            return None
        if self._outages:
            return self._report(now, self._flapping())
        self._quiet = False  # said from now on: its end will be too
        return self._report(now, Report(HealthEvent.STILL_DOWN, self._failures, reason))

    def succeeded(self, now: float) -> Report | None:
        """A call succeeded at `now`: a report when the backend was down (or flapped)."""
        was_down = self.up is False
        self.up = True
        if not was_down or self._quiet:
            self._quiet = False
            if self._outages and now - self._last_report >= self.summary_every:
                return self._report(now, self._flapping())
            return None
        return self._report(now, Report(HealthEvent.CAME_BACK, self._total, ""))

    def _flapping(self) -> Report:
        self._quiet = False
        return Report(HealthEvent.FLAPPING, self._failures, self._reason, self._outages)

    def _report(self, now: float, report: Report) -> Report:
        if report.event in (HealthEvent.CAME_BACK, HealthEvent.FLAPPING):
            self._quiet_until = now + self.summary_every
        self._last_report = now
        self._failures = self._outages = 0
        return report
