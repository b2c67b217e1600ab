from __future__ import annotations

import pytest

from domain.admission import TenantRateLimit, TokenBucket


def test_a_bucket_admits_a_burst_then_the_rate() -> None:
    bucket = TokenBucket(rate=10, burst=3)
    assert [bucket.take(0.0) for _ in range(3)] == [0, 0, 0]
    assert bucket.take(0.0) == pytest.approx(0.1)  # the next token comes in 1/rate
    assert bucket.take(0.05) == pytest.approx(0.05)
    assert bucket.take(0.1) == 0
    assert bucket.take(0.1) == pytest.approx(0.1)


def test_a_bucket_never_holds_more_than_its_burst() -> None:
    bucket = TokenBucket(rate=1, burst=2)
    bucket.take(0.0)
    assert [bucket.take(1000.0) for _ in range(3)] == [0, 0, pytest.approx(1.0)]


def test_a_clock_that_goes_back_adds_no_tokens() -> None:
    bucket = TokenBucket(rate=1, burst=1)
    bucket.take(10.0)
    assert bucket.take(5.0) == pytest.approx(1.0)


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 1), (1, 0)])
def test_a_bucket_needs_a_positive_rate_and_burst(rate: float, burst: int) -> None:
    with pytest.raises(ValueError, match="rate > 0 and burst >= 1"):
        TenantRateLimit(rate, burst)


def test_tenants_have_their_own_buckets() -> None:
    limit = TenantRateLimit(rate=1, burst=1)
    assert limit.take("alpha", 0.0) == 0
    assert limit.take("alpha", 0.0) > 0
    assert limit.take("beta", 0.0) == 0


def test_the_table_stays_bounded_and_forgets_idle_tenants_first() -> None:
    limit = TenantRateLimit(rate=1, burst=1, max_tenants=2)
    limit.take("idle", 0.0)  # spent at 0 s, full again from 1 s: the same as a new bucket
    limit.take("busy", 5.0)
    limit.take("new", 5.5)  # the table is full: "idle" goes, "busy" keeps its spent bucket
    assert len(limit) == 2
    assert limit.take("busy", 5.5) > 0
    assert limit.take("idle", 5.5) == 0  # a fresh bucket, as it would have refilled anyway


def test_when_every_tenant_is_busy_the_oldest_is_forgotten() -> None:
    limit = TenantRateLimit(rate=1, burst=1, max_tenants=2)
    limit.take("first", 0.0)
    limit.take("second", 0.1)
    limit.take("third", 0.2)
    assert len(limit) == 2
    assert limit.take("third", 0.2) > 0
    for i in range(1000):
        limit.take(f"one-off-{i}", 0.3)
    assert len(limit) == 2
