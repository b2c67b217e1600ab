"""BackoffPolicy: exponential backoff with full jitter, retry-after floor, deadline (DESIGN §4)."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.backoff import BackoffPolicy

seconds = st.floats(min_value=0.0, max_value=1e4, allow_subnormal=False)
jitter = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)
times = st.floats(min_value=0.0, max_value=1e6)
retries = st.integers(min_value=0, max_value=2_000)
few_retries = st.integers(min_value=0, max_value=10)


@st.composite
def policies(
    draw: st.DrawFn,
    max_retries: st.SearchStrategy[int] = few_retries,
    wait_initial: st.SearchStrategy[float] = seconds,
) -> BackoffPolicy:
    return BackoffPolicy(
        max_retries=draw(max_retries), wait_initial=draw(wait_initial), wait_max=draw(seconds)
    )


def exact_ceiling(policy: BackoffPolicy, retry: int) -> Fraction:
    """min(wait_max, wait_initial * 2**retry), in exact arithmetic (no float overflow)."""
    return min(Fraction(policy.wait_max), Fraction(policy.wait_initial) * 2**retry)


@given(policy=policies(max_retries=st.just(10**9)), retry=retries, u=jitter, now=times)
def test_delay_is_full_jitter_below_the_capped_exponential(
    policy: BackoffPolicy, retry: int, u: float, now: float
) -> None:
    delay = policy.delay(retry, u, now=now, deadline=math.inf)

    assert delay is not None
    bound = exact_ceiling(policy, retry)
    assert delay >= 0
    if bound == 0:
        assert delay == 0
    else:
        assert Fraction(delay) < bound


def test_delay_is_u_times_the_capped_exponential() -> None:
    policy = BackoffPolicy(max_retries=10, wait_initial=0.5, wait_max=3.0)

    delays = [policy.delay(n, 0.5, now=0.0, deadline=math.inf) for n in range(5)]

    assert delays == [0.25, 0.5, 1.0, 1.5, 1.5]


@given(
    policy=policies(
        max_retries=st.just(10**31), wait_initial=st.floats(min_value=1e-6, max_value=1e4)
    ),
    retry=st.integers(min_value=1_000, max_value=10**30),
    u=jitter,
)
def test_huge_retry_counts_reach_the_cap_without_overflow(
    policy: BackoffPolicy, retry: int, u: float
) -> None:
    assert policy.ceiling(retry) == policy.wait_max

    delay = policy.delay(retry, u, now=0.0, deadline=math.inf)

    assert delay is not None
    assert 0 <= delay < policy.wait_max or delay == policy.wait_max == 0


@given(
    policy=policies(),
    retry=retries,
    u=jitter,
    now=times,
    retry_after=st.floats(min_value=0.0, max_value=1e5),
)
def test_retry_after_is_a_floor(
    policy: BackoffPolicy, retry: int, u: float, now: float, retry_after: float
) -> None:
    delay = policy.delay(retry, u, now=now, deadline=math.inf, retry_after=retry_after)

    assert delay is None or delay >= retry_after
    if retry < policy.max_retries:
        assert delay == max(retry_after, policy.delay(retry, u, now=now, deadline=math.inf))


@given(
    policy=policies(),
    retry=retries,
    u=jitter,
    now=times,
    budget=st.floats(min_value=-10.0, max_value=1e4),
    retry_after=st.none() | st.floats(min_value=0.0, max_value=1e5),
)
def test_never_waits_until_or_past_the_deadline(
    policy: BackoffPolicy,
    retry: int,
    u: float,
    now: float,
    budget: float,
    retry_after: float | None,
) -> None:
    deadline = now + budget

    delay = policy.delay(retry, u, now=now, deadline=deadline, retry_after=retry_after)

    assert delay is None or now + delay < deadline


def test_a_retry_after_beyond_the_deadline_means_no_retry() -> None:
    policy = BackoffPolicy(max_retries=3, wait_initial=0.1, wait_max=1.0)

    assert policy.delay(0, 0.0, now=100.0, deadline=105.0, retry_after=5.0) is None
    assert policy.delay(0, 0.0, now=100.0, deadline=105.0, retry_after=4.9) == 4.9


@given(policy=policies(), extra=st.integers(min_value=0, max_value=10**6), u=jitter)
def test_no_delay_once_retries_are_used_up(policy: BackoffPolicy, extra: int, u: float) -> None:
    retry = policy.max_retries + extra

    assert policy.delay(retry, u, now=0.0, deadline=math.inf) is None
    assert policy.delay(retry, u, now=0.0, deadline=math.inf, retry_after=0.0) is None


def test_max_retries_counts_retries_after_the_first_attempt() -> None:
    policy = BackoffPolicy(max_retries=2, wait_initial=0.1, wait_max=1.0)

    allowed = [policy.delay(n, 0.5, now=0.0, deadline=math.inf) is not None for n in range(4)]

    assert allowed == [True, True, False, False]


def test_zero_retries_never_retries() -> None:
    assert BackoffPolicy(0, 0.1, 1.0).delay(0, 0.0, now=0.0, deadline=math.inf) is None


@pytest.mark.parametrize(
    ("max_retries", "wait_initial", "wait_max"), [(-1, 0.1, 1.0), (1, -0.1, 1.0), (1, 0.1, -1.0)]
)
def test_negative_settings_are_rejected(
    max_retries: int, wait_initial: float, wait_max: float
) -> None:
    with pytest.raises(ValueError, match=">= 0"):
        BackoffPolicy(max_retries, wait_initial, wait_max)
