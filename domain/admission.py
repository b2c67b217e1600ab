"""Per-tenant request rate: token buckets. Pure: the caller passes the time."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class TokenBucket:
    """`rate` requests per second on average, up to `burst` at once."""

    rate: float
    burst: int
    tokens: float = field(init=False)
    updated: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst < 1:
            raise ValueError("a token bucket needs rate > 0 and burst >= 1")
        self.tokens = float(self.burst)

    def take(self, now: float) -> float:
        """0 when a request may go now (and takes a token), else seconds until one may."""
        self.refill(now)
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate

    def refill(self, now: float) -> None:
        if self.updated is not None:
            elapsed = max(0.0, now - self.updated)
            self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
        self.updated = now

    @property
    def full(self) -> bool:
        return self.tokens >= self.burst


class TenantRateLimit:
    """A bucket per tenant. A full bucket is the same as a new one, so it is dropped when the
    table reaches `max_tenants`: memory stays bounded whatever tenants a caller invents."""

    def __init__(self, rate: float, burst: int, max_tenants: int = 10_000) -> None:
        TokenBucket(rate, burst)  # validates the arguments now, not on the first request
        self._rate, self._burst, self._max = rate, burst, max_tenants
        self._buckets: dict[str, TokenBucket] = {}

    def take(self, tenant: str, now: float) -> float:
        bucket = self._buckets.get(tenant)
        if bucket is None:
            if len(self._buckets) >= self._max:
                self._forget_idle(now)
            bucket = self._buckets[tenant] = TokenBucket(self._rate, self._burst)
        return bucket.take(now)

    def __len__(self) -> int:
        return len(self._buckets)

    def _forget_idle(self, now: float) -> None:
        for tenant, bucket in list(self._buckets.items()):
            bucket.refill(now)
            if bucket.full:
                del self._buckets[tenant]
        if len(self._buckets) >= self._max:  # every tenant is busy: forget the oldest
            del self._buckets[next(iter(self._buckets))]
