"""STATE_BACKEND=redis: key cooldowns, tenant rate limits and usage in Redis, shared by every
replica and worker that points at it.

Every call is bounded by STATE_TIMEOUT. Redis down or slow never refuses a request: the proxy
goes on with its local state (each process's key pools, a local token bucket per tenant, usage
counted in memory and added to Redis once it is back), says so once (a log line, the gauge
`state_backend_up` 0), leaves Redis alone for RETRY_EVERY, then tries it again. Times that must
agree between replicas (cooldown ends, token refills) are Redis's own clock (TIME), so replicas
with skewed clocks still agree.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from contextlib import suppress
from typing import Protocol, TypeVar

from redis.asyncio import Redis

from application.ports import (
    NOTHING_SHARED,
    Clock,
    Counts,
    KeyCooldowns,
    RateLimiter,
    SharedKeys,
    UsageLedger,
)
from domain.backend_health import BackendHealth, HealthEvent, Report

log = logging.getLogger("llm_proxy.state")
T = TypeVar("T")

PREFIX = "llmproxy:state:"
RETRY_EVERY = 1.0  # seconds Redis is left alone after a failed call
DISABLED_SECONDS = 3600  # a rejected key stays disabled for everyone this long (then retried)

# KEYS[1] the provider's cooldowns (fingerprint -> end, ms of Redis's clock), KEYS[2] its
# disabled keys. Returns {fingerprint, ms left, ...} and the disabled fingerprints.
_SEEN = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local all = redis.call('HGETALL', KEYS[1])
local cooling = {}
for i = 1, #all, 2 do
  local left = tonumber(all[i + 1]) - now
  if left > 0 then
    cooling[#cooling + 1] = all[i]
    cooling[#cooling + 1] = tostring(left)
  end
end
return {cooling, redis.call('SMEMBERS', KEYS[2])}
"""

# KEYS[1] the provider's cooldowns; ARGV: fingerprint, ms of rest. A cooldown only lengthens;
# ended ones are dropped; the hash expires with its last cooldown.
_COOLED = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local untl = now + tonumber(ARGV[2])
local all = redis.call('HGETALL', KEYS[1])
local last = untl
for i = 1, #all, 2 do
  local other = tonumber(all[i + 1])
  if other <= now then redis.call('HDEL', KEYS[1], all[i]) elseif other > last then last = other end
end
local current = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if untl > current then redis.call('HSET', KEYS[1], ARGV[1], untl) end
redis.call('PEXPIRE', KEYS[1], last - now + 1000)
return 1
"""

# KEYS[1] the tenant's bucket; ARGV: rate (tokens/s), burst. Returns the seconds to wait as a
# string (0: a token was taken). The bucket expires once it would be full again.
_TAKE = """
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local b = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(b[1]) or burst, tonumber(b[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
return tostring(wait)
"""


class StateMetrics(Protocol):
    def state_backend(self, up: bool) -> None: ...


class Unreachable(Exception):
    """Redis is down, slow, or being left alone: use local state."""


class Reachability:
    """Runs calls to Redis under STATE_TIMEOUT and keeps track of whether it answers."""

    def __init__(
        self, timeout: float, clock: Clock, metrics: StateMetrics, retry_every: float = RETRY_EVERY
    ) -> None:
        self._timeout, self._clock, self._metrics = timeout, clock, metrics
        self._retry_every = retry_every
        self._health = BackendHealth()
        self._retry_at = float("-inf")
        metrics.state_backend(True)

    @property
    def up(self) -> bool:
        return self._health.up is not False

    async def call(self, work: Callable[[], Awaitable[T]]) -> T:
        if not self.up and self._clock.now() < self._retry_at:
            raise Unreachable
        try:
            async with asyncio.timeout(self._timeout):
                result = await work()
        except Exception as error:
            reason = "timeout" if isinstance(error, TimeoutError) else type(error).__name__
            self._retry_at = self._clock.now() + self._retry_every
            if self.up:
                self._metrics.state_backend(False)
            self._report(self._health.failed(self._clock.now(), reason))
            raise Unreachable from error
        if not self.up:
            self._metrics.state_backend(True)
        self._report(self._health.succeeded(self._clock.now()))
        return result

    def _report(self, report: Report | None) -> None:
        if report is None:
            return
        if report.event is HealthEvent.WENT_DOWN:
            log.warning(
                "shared state (Redis) unreachable (%s): each process goes on with its own key "
                "cooldowns, rate limits and usage counts until it is back",
                report.reason,
                extra={"backend": "state", "reason": report.reason},
            )
        elif report.event is HealthEvent.STILL_DOWN:
            log.warning(
                "shared state (Redis) still unreachable (%s): %d calls used local state",
                report.reason,
                report.failures,
                extra={"backend": "state", "reason": report.reason},
            )
        elif report.event is HealthEvent.FLAPPING:
            log.warning(
                "shared state (Redis) flapping (%s): unreachable %d more times, %d calls used "
                "local state",
                report.reason,
                report.outages,
                report.failures,
                extra={"backend": "state", "reason": report.reason},
            )
        else:
            log.info(
                "shared state (Redis) is back after %d calls used local state",
                report.failures,
                extra={"backend": "state"},
            )


class RedisCooldowns(KeyCooldowns):
    def __init__(self, client: Redis, reach: Reachability) -> None:
        self._client, self._reach = client, reach
        self._seen = client.register_script(_SEEN)
        self._cooled = client.register_script(_COOLED)
        self._tasks: set[asyncio.Task[None]] = set()

    async def seen(self, provider: str) -> SharedKeys:
        keys = [f"{PREFIX}cooldown:{provider}", f"{PREFIX}disabled:{provider}"]
        try:
            cooling, disabled = await self._reach.call(lambda: self._seen(keys=keys))
        except Unreachable:
            return NOTHING_SHARED
        pairs = iter(cooling)
        return SharedKeys(
            {fp.decode(): int(left) / 1000 for fp, left in zip(pairs, pairs, strict=True)},
            frozenset(fp.decode() for fp in disabled),
        )

    def cooled(self, provider: str, fingerprint: str, seconds: float) -> None:
        milliseconds = max(1, round(seconds * 1000))
        key = f"{PREFIX}cooldown:{provider}"
        self._background(lambda: self._cooled(keys=[key], args=[fingerprint, milliseconds]))

    def rejected(self, provider: str, fingerprint: str) -> None:
        key = f"{PREFIX}disabled:{provider}"

        async def disable() -> None:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.sadd(key, fingerprint)
                pipe.expire(key, DISABLED_SECONDS)
                await pipe.execute()

        self._background(disable)

    def _background(self, work: Callable[[], Awaitable[object]]) -> None:
        async def tell() -> None:
            # unreachable: this process's own pool has it; the others learn from their own 429s
            with suppress(Unreachable):
                await self._reach.call(work)

        task = asyncio.create_task(tell())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class RedisRateLimiter(RateLimiter):
    """One bucket per tenant for every process; the local one while Redis is unreachable."""

    def __init__(
        self, client: Redis, reach: Reachability, rate: float, burst: int, local: RateLimiter
    ) -> None:
        self._reach, self._rate, self._burst, self._local = reach, rate, burst, local
        self._take = client.register_script(_TAKE)

    async def take(self, tenant: str) -> float:
        args: list[str | int] = [repr(self._rate), self._burst]
        try:
            wait = await self._reach.call(
                lambda: self._take(keys=[f"{PREFIX}bucket:{tenant}"], args=args)
            )
        except Unreachable:
            return await self._local.take(tenant)
        return float(wait)


class RedisLedger(UsageLedger):
    """Counters in one hash per tenant and period (`model|kind` -> count). While Redis is
    unreachable, reads answer the last totals Redis gave this process plus what it added since:
    those additions wait in memory until Redis is back."""

    def __init__(self, client: Redis, reach: Reachability) -> None:
        self._client, self._reach = client, reach
        self._unsent: dict[tuple[str, str], tuple[Counter[tuple[str, str]], float]] = {}
        self._known: dict[tuple[str, str], dict[tuple[str, str], int]] = {}
        self._retrying: asyncio.Task[None] | None = None

    async def add(self, tenant: str, period: str, counts: Counts, expires_at: float) -> None:
        pending, _ = self._unsent.pop((tenant, period), (Counter(), expires_at))
        pending.update(counts)
        try:
            await self._reach.call(lambda: self._send(tenant, period, pending, expires_at))
        except Unreachable:
            self._unsent[(tenant, period)] = (pending, expires_at)
            if self._retrying is None or self._retrying.done():
                self._retrying = asyncio.create_task(self._send_when_back())
            return
        await self._flush()

    async def _send_when_back(self) -> None:
        """Tries again every RETRY_EVERY until nothing waits (a process that gets no more
        requests would otherwise keep its counts from the others)."""
        while self._unsent:
            await asyncio.sleep(RETRY_EVERY)
            await self._flush()

    async def _send(self, tenant: str, period: str, counts: Counts, expires_at: float) -> None:
        key = f"{PREFIX}usage:{tenant}:{period}"
        fields = list(counts)
        async with self._client.pipeline(transaction=True) as pipe:
            for model, kind in fields:
                pipe.hincrby(key, f"{model}|{kind}", counts[(model, kind)])
            pipe.expireat(key, int(expires_at))
            totals = await pipe.execute()
        known = self._known.setdefault((tenant, period), {})
        known.update(zip(fields, (int(n) for n in totals), strict=False))

    async def _flush(self) -> None:
        """What waited while Redis was unreachable."""
        for (tenant, period), (counts, expires_at) in list(self._unsent.items()):
            del self._unsent[(tenant, period)]
            try:
                await self._reach.call(lambda: self._send(tenant, period, counts, expires_at))  # noqa: B023
            except Unreachable:
                self._unsent[(tenant, period)] = (counts, expires_at)
                return

    async def read(self, tenant: str, period: str) -> dict[tuple[str, str], int]:
        key = f"{PREFIX}usage:{tenant}:{period}"
        try:
            raw = await self._reach.call(lambda: self._client.hgetall(key))
            known = self._known[(tenant, period)] = _counts(raw)
        except Unreachable:
            known = self._known.get((tenant, period), {})
        total = Counter(known)
        total.update(self._unsent.get((tenant, period), (Counter(), 0.0))[0])
        return dict(total)

    async def close(self) -> None:
        if self._retrying is not None:
            self._retrying.cancel()
        await self._flush()  # a last try: what is still unsent now is lost
        await self._client.aclose()


def _counts(raw: Mapping[bytes | str, bytes | str]) -> dict[tuple[str, str], int]:
    counts = {}
    for field, value in raw.items():
        name = field.decode() if isinstance(field, bytes) else field
        model, _, kind = name.rpartition("|")
        counts[(model, kind)] = int(value)
    return counts
