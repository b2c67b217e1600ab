"""Where the state that replicas and workers may share lives (STATE_BACKEND): key cooldowns,
tenant rate limits, usage. `local`: in this process (usage in SQLite under CACHE_DIR);
`redis`: in Redis, shared by every process that points at it (redis.py)."""

from __future__ import annotations

from dataclasses import dataclass

from application.ports import (
    NOTHING_SHARED,
    Clock,
    KeyCooldowns,
    RateLimiter,
    SharedKeys,
    UsageLedger,
)
from domain.admission import TenantRateLimit


@dataclass(frozen=True, slots=True)
class State:
    """The state of one backend; `rate` None: no TENANT_RATE_LIMIT. `where` says, for the
    startup log line, where it lives."""

    cooldowns: KeyCooldowns
    ledger: UsageLedger
    rate: RateLimiter | None
    where: str


class LocalCooldowns(KeyCooldowns):
    """Shares nothing: each process's key pools keep their own cooldowns."""

    async def seen(self, provider: str) -> SharedKeys:
        return NOTHING_SHARED

    def cooled(self, provider: str, fingerprint: str, seconds: float) -> None:
        pass

    def rejected(self, provider: str, fingerprint: str) -> None:
        pass


class LocalRateLimiter(RateLimiter):
    def __init__(self, buckets: TenantRateLimit, clock: Clock) -> None:
        self._buckets, self._clock = buckets, clock

    async def take(self, tenant: str) -> float:
        return self._buckets.take(tenant, self._clock.now())
