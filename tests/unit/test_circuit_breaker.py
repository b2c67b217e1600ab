"""CircuitBreaker: Closed -> Open -> Half-Open -> Closed or Open again (DESIGN §4)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
)

from domain.circuit_breaker import BreakerState, CircuitBreaker, Permit, Verdict
from domain.errors import CircuitOpen

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN
SUCCESS, FAILURE, NEUTRAL = Verdict.SUCCESS, Verdict.FAILURE, Verdict.NEUTRAL


def breaker(threshold: int = 3, cooldown: float = 10.0, probes: int = 1) -> CircuitBreaker:
    return CircuitBreaker(
        "openai", failure_threshold=threshold, cooldown=cooldown, half_open_probes=probes
    )


def call(cb: CircuitBreaker, verdict: Verdict, now: float) -> None:
    cb.record(cb.admit(now), verdict, now)


def trip(cb: CircuitBreaker, now: float) -> None:
    for _ in range(cb.failure_threshold):
        call(cb, FAILURE, now)
    assert cb.state(now) is OPEN


# --- configuration and gauge ----------------------------------------------------------------


def test_gauge_values_are_0_closed_1_open_2_half_open() -> None:
    assert [int(s) for s in (CLOSED, OPEN, HALF_OPEN)] == [0, 1, 2]


@pytest.mark.parametrize(
    ("threshold", "cooldown", "probes"), [(0, 1.0, 1), (1, -1.0, 1), (1, 1.0, 0)]
)
def test_invalid_configuration_is_rejected(threshold: int, cooldown: float, probes: int) -> None:
    with pytest.raises(ValueError, match=">= 1"):
        CircuitBreaker("openai", threshold, cooldown, probes)


# --- Closed ---------------------------------------------------------------------------------


def test_opens_only_after_threshold_consecutive_failures() -> None:
    cb = breaker(threshold=3)
    call(cb, FAILURE, 0.0)
    call(cb, FAILURE, 0.0)
    assert cb.state(0.0) is CLOSED

    call(cb, FAILURE, 0.0)
    assert cb.state(0.0) is OPEN


def test_a_success_resets_the_consecutive_failure_count() -> None:
    cb = breaker(threshold=3)
    for verdict in (FAILURE, FAILURE, SUCCESS, FAILURE, FAILURE):
        call(cb, verdict, 0.0)

    assert cb.state(0.0) is CLOSED


def test_a_neutral_outcome_neither_counts_nor_resets_failures() -> None:
    cb = breaker(threshold=2)
    for verdict in (FAILURE, NEUTRAL, NEUTRAL):
        call(cb, verdict, 0.0)
    assert cb.state(0.0) is CLOSED

    call(cb, FAILURE, 0.0)
    assert cb.state(0.0) is OPEN


# --- Open -----------------------------------------------------------------------------------


def test_open_rejects_fast_with_the_time_left() -> None:
    cb = breaker(cooldown=10.0)
    trip(cb, now=100.0)

    with pytest.raises(CircuitOpen) as caught:
        cb.admit(104.0)

    assert caught.value.provider == "openai"
    assert caught.value.retry_after == pytest.approx(6.0)
    assert "retry after 6.0s" in str(caught.value)


def test_open_turns_half_open_exactly_when_the_cooldown_has_elapsed() -> None:
    cb = breaker(cooldown=10.0)
    trip(cb, now=100.0)

    assert cb.state(109.999) is OPEN
    assert cb.state(110.0) is HALF_OPEN


def test_late_outcomes_while_open_change_nothing() -> None:
    cb = breaker(threshold=1, cooldown=10.0)
    slow = cb.admit(0.0)  # in flight when the breaker opens
    slower = cb.admit(0.0)
    call(cb, FAILURE, 0.0)

    cb.record(slow, FAILURE, 5.0)  # does not restart the cooldown
    cb.record(slower, SUCCESS, 6.0)  # does not close an open breaker

    assert cb.state(9.0) is OPEN
    assert cb.state(10.0) is HALF_OPEN


# --- Half-Open ------------------------------------------------------------------------------


@pytest.mark.parametrize("probes", [1, 2, 3])
def test_half_open_admits_at_most_the_configured_probes(probes: int) -> None:
    cb = breaker(cooldown=1.0, probes=probes)
    trip(cb, now=0.0)

    for _ in range(probes):
        cb.admit(1.0)
    with pytest.raises(CircuitOpen) as caught:
        cb.admit(1.0)

    assert caught.value.retry_after == 0.0
    assert cb.state(1.0) is HALF_OPEN


def test_a_probe_success_closes() -> None:
    cb = breaker(threshold=2, cooldown=1.0)
    trip(cb, now=0.0)

    call(cb, SUCCESS, 1.0)

    assert cb.state(1.0) is CLOSED
    call(cb, FAILURE, 1.0)  # the failure count starts from zero again
    assert cb.state(1.0) is CLOSED


def test_a_probe_failure_reopens_for_a_full_cooldown() -> None:
    cb = breaker(cooldown=5.0)
    trip(cb, now=0.0)

    call(cb, FAILURE, 7.0)

    assert cb.state(7.0) is OPEN
    assert cb.state(11.9) is OPEN
    assert cb.state(12.0) is HALF_OPEN


def test_a_neutral_probe_frees_its_slot_and_changes_nothing_else() -> None:
    cb = breaker(cooldown=1.0, probes=1)
    trip(cb, now=0.0)
    probe = cb.admit(1.0)

    cb.record(probe, NEUTRAL, 1.0)

    assert cb.state(1.0) is HALF_OPEN
    cb.admit(1.0)  # the slot is free again
    with pytest.raises(CircuitOpen):
        cb.admit(1.0)


@pytest.mark.parametrize("verdict", list(Verdict))
def test_a_stale_call_neither_frees_a_probe_slot_nor_decides(verdict: Verdict) -> None:
    cb = breaker(threshold=1, cooldown=1.0, probes=1)
    slow = cb.admit(0.0)  # a slow call admitted while closed
    call(cb, FAILURE, 0.0)  # opens
    cb.admit(1.0)  # the one probe

    cb.record(slow, verdict, 1.5)  # the slow call ends

    assert cb.state(1.5) is HALF_OPEN
    with pytest.raises(CircuitOpen):
        cb.admit(1.5)  # would be a second concurrent probe


# --- every event sequence against a reference state machine ----------------------------------

LEGAL_RECORD_TRANSITIONS: dict[Verdict, set[tuple[BreakerState, BreakerState]]] = {
    SUCCESS: {(CLOSED, CLOSED), (HALF_OPEN, CLOSED), (OPEN, OPEN)},
    FAILURE: {(CLOSED, CLOSED), (CLOSED, OPEN), (HALF_OPEN, OPEN), (OPEN, OPEN)},
    NEUTRAL: {(CLOSED, CLOSED), (HALF_OPEN, HALF_OPEN), (OPEN, OPEN)},
}


@dataclass(frozen=True)
class Call:
    """An admitted call; `epoch` is the half-open period it is a probe of (None: not a probe)."""

    number: int
    epoch: int | None
    permit: Permit


class BreakerMachine(RuleBasedStateMachine):
    """Random admit / record / time advances; every admitted call is recorded at most once."""

    calls = Bundle("calls")
    cb: CircuitBreaker

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.state = CLOSED
        self.failures = 0
        self.opened_at = 0.0
        self.slots = 0
        self.epoch = 0  # counts half-open periods
        self.in_flight: set[Call] = set()
        self.counter = 0

    @initialize(
        threshold=st.integers(min_value=1, max_value=4),
        cooldown=st.sampled_from([0.0, 1.0, 10.0, 30.0]),
        probes=st.integers(min_value=1, max_value=3),
    )
    def configure(self, threshold: int, cooldown: float, probes: int) -> None:
        self.cb = breaker(threshold, cooldown, probes)

    # -- reference model

    def model_state(self) -> BreakerState:
        if self.state is OPEN and self.now >= self.opened_at + self.cb.cooldown:
            self.state = HALF_OPEN
            self.slots = 0
            self.epoch += 1
        return self.state

    def model_open(self) -> None:
        self.state, self.opened_at, self.failures, self.slots = OPEN, self.now, 0, 0

    def model_close(self) -> None:
        self.state, self.failures, self.slots = CLOSED, 0, 0

    # -- rules

    @rule(target=calls)
    def admit(self) -> object:
        state = self.model_state()
        if state is OPEN:
            with pytest.raises(CircuitOpen) as caught:
                self.cb.admit(self.now)
            assert caught.value.retry_after == pytest.approx(
                self.opened_at + self.cb.cooldown - self.now
            )
            assert caught.value.retry_after > 0
            return multiple()
        if state is HALF_OPEN and self.slots >= self.cb.half_open_probes:
            with pytest.raises(CircuitOpen) as caught:
                self.cb.admit(self.now)
            assert caught.value.retry_after == 0.0
            return multiple()

        permit = self.cb.admit(self.now)
        if state is HALF_OPEN:
            self.slots += 1
        self.counter += 1
        admitted = Call(self.counter, self.epoch if state is HALF_OPEN else None, permit)
        self.in_flight.add(admitted)
        return admitted

    @rule(admitted=consumes(calls), verdict=st.sampled_from(Verdict))
    def record(self, admitted: Call, verdict: Verdict) -> None:
        before = self.model_state()
        assert self.cb.state(self.now) is before
        self.in_flight.discard(admitted)

        stale = before is HALF_OPEN and admitted.epoch != self.epoch
        if before is HALF_OPEN and not stale:
            self.slots -= 1
        if stale:
            pass  # a call that is no probe of this half-open period decides nothing
        elif verdict is SUCCESS and before is not OPEN:
            self.model_close()
        elif verdict is FAILURE and before is HALF_OPEN:
            self.model_open()
        elif verdict is FAILURE and before is CLOSED:
            self.failures += 1
            if self.failures >= self.cb.failure_threshold:
                self.model_open()

        after = self.state  # before a zero cooldown turns a fresh Open into Half-Open
        assert stale or (before, after) in LEGAL_RECORD_TRANSITIONS[verdict]

        self.cb.record(admitted.permit, verdict, self.now)
        assert self.cb.state(self.now) is self.model_state()

    @rule(dt=st.floats(min_value=0.0, max_value=20.0))
    def advance(self, dt: float) -> None:
        self.now += dt

    @precondition(lambda self: self.state is OPEN)
    @rule(just_before=st.booleans())
    def advance_to_the_end_of_the_cooldown(self, just_before: bool) -> None:
        end = self.opened_at + self.cb.cooldown
        self.now = max(self.now, end - 1e-6 if just_before else end)

    # -- invariants

    @invariant()
    def state_matches_the_model(self) -> None:
        state = self.cb.state(self.now)
        assert state is self.model_state()
        assert int(state) in (0, 1, 2)

    @invariant()
    def half_open_never_has_more_probes_in_flight_than_allowed(self) -> None:
        if self.model_state() is not HALF_OPEN:
            return
        probes = [c for c in self.in_flight if c.epoch == self.epoch]
        assert len(probes) == self.slots <= self.cb.half_open_probes


BreakerMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=50)
TestBreakerMachine = BreakerMachine.TestCase
