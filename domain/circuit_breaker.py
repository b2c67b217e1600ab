"""Per-provider circuit breaker: Closed -> Open -> Half-Open -> Closed (or Open again)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from domain.errors import CircuitOpen


class BreakerState(enum.IntEnum):
    """Values are the `circuit_breaker_state` gauge's."""

    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


class Verdict(enum.Enum):
    SUCCESS = "success"
    FAILURE = "failure"
    # The call said nothing about the provider's health (client error, one key's rate limit,
    # client cancellation): it only gives back its half-open probe slot.
    NEUTRAL = "neutral"


@dataclass(frozen=True, slots=True)
class Permit:
    """Proof of admission; `probe_of` is the half-open period the call probes (None: not a probe).

    A call admitted before the breaker opened may end during a later half-open period: its
    permit tells the breaker it is no probe, so it neither frees a probe slot nor decides.
    """

    probe_of: int | None = None


class CircuitBreaker:
    def __init__(
        self, provider: str, failure_threshold: int, cooldown: float, half_open_probes: int = 1
    ) -> None:
        if failure_threshold < 1 or half_open_probes < 1 or cooldown < 0:
            raise ValueError("failure_threshold and half_open_probes must be >= 1, cooldown >= 0")
        self.provider = provider
        self.failure_threshold = failure_threshold
        self.cooldown = cooldown
        self.half_open_probes = half_open_probes
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probes_in_flight = 0
        self._half_open_period = 0

    def state(self, now: float) -> BreakerState:
        if self._state is BreakerState.OPEN and now >= self._opened_at + self.cooldown:
            self._state = BreakerState.HALF_OPEN
            self._probes_in_flight = 0
            self._half_open_period += 1
        return self._state

    def admit(self, now: float) -> Permit:
        """Lets a call through or raises CircuitOpen. Every permit must be recorded once."""
        state = self.state(now)
        if state is BreakerState.OPEN:
            raise CircuitOpen(self.provider, self._opened_at + self.cooldown - now)
        if state is BreakerState.HALF_OPEN:
            if self._probes_in_flight >= self.half_open_probes:
                raise CircuitOpen(self.provider, 0.0)
            self._probes_in_flight += 1
            return Permit(self._half_open_period)
        return Permit()

    def record(self, permit: Permit, verdict: Verdict, now: float) -> None:
        state = self.state(now)
        if state is BreakerState.HALF_OPEN:
            if permit.probe_of != self._half_open_period:
                return  # not a probe of this period: its outcome is stale
            self._probes_in_flight -= 1
        if verdict is Verdict.SUCCESS:
            if state is not BreakerState.OPEN:
                self._close()
        elif verdict is Verdict.FAILURE:
            if state is BreakerState.HALF_OPEN:
                self._open(now)
            elif state is BreakerState.CLOSED:
                self._failures += 1
                if self._failures >= self.failure_threshold:
                    self._open(now)

    def _open(self, now: float) -> None:
        self._state = BreakerState.OPEN
        self._opened_at = now
        self._failures = 0
        self._probes_in_flight = 0

    def _close(self) -> None:
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._probes_in_flight = 0
