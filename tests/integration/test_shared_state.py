"""The Redis state adapters (STATE_BACKEND=redis) against a real Redis: two clients stand for two
processes. And the local ledger's SQLite file across a reopen."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from adapters.outbound.state import LocalRateLimiter
from adapters.outbound.state.redis import (
    RETRY_EVERY,
    Reachability,
    RedisCooldowns,
    RedisLedger,
    RedisRateLimiter,
)
from adapters.outbound.state.sqlite import SqliteLedger
from adapters.outbound.store.redis import redis_client
from adapters.process.system import SystemClock
from domain.admission import TenantRateLimit
from tests.containers import RedisServer, disposable_redis, redis_server  # noqa: F401

pytestmark = pytest.mark.integration
TIMEOUT = 0.2


class Gauge:
    def __init__(self) -> None:
        self.values: list[bool] = []

    def state_backend(self, up: bool) -> None:
        self.values.append(up)


class Process:
    """What one proxy process holds of the Redis state."""

    def __init__(self, addr: str, rate: float = 1.0, burst: int = 2) -> None:
        self.client = redis_client(addr, TIMEOUT)
        self.gauge = Gauge()
        clock = SystemClock()
        self.reach = Reachability(TIMEOUT, clock, self.gauge, retry_every=0.1)
        self.cooldowns = RedisCooldowns(self.client, self.reach)
        local = LocalRateLimiter(TenantRateLimit(rate, burst), clock)
        self.rate = RedisRateLimiter(self.client, self.reach, rate, burst, local)
        self.ledger = RedisLedger(self.client, self.reach)

    async def settle(self) -> None:
        await asyncio.sleep(0.05)  # the background reports land


async def test_one_token_bucket_for_every_process(redis_server: RedisServer) -> None:  # noqa: F811
    one, two = Process(redis_server.addr), Process(redis_server.addr)
    tenant = f"bucket-{id(one)}"
    waits = [await p.rate.take(tenant) for p in (one, two, one, two, one, two)]
    assert waits[:2] == [0.0, 0.0]  # the burst of 2, whichever process takes it
    assert all(0.9 < w <= 1.0 for w in waits[2:])  # then one a second, for both together
    await asyncio.sleep(1.0)
    assert await two.rate.take(tenant) == 0.0
    assert await one.rate.take(tenant) > 0.9
    assert await one.rate.take("another-tenant-" + tenant) == 0.0  # a bucket per tenant


async def test_a_cooldown_seen_by_one_process_is_seen_by_the_others(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    one, two = Process(redis_server.addr), Process(redis_server.addr)
    provider = f"openai-{id(one)}"
    one.cooldowns.cooled(provider, "key-aaaa", 30.0)
    one.cooldowns.cooled(provider, "key-bbbb", 0.2)
    one.cooldowns.cooled(provider, "key-aaaa", 10.0)  # shorter: the longer one stays
    one.cooldowns.rejected(provider, "key-cccc")
    await one.settle()
    seen = await two.cooldowns.seen(provider)
    assert set(seen.cooling) == {"key-aaaa", "key-bbbb"}
    assert 29.0 < seen.cooling["key-aaaa"] <= 30.0
    assert seen.disabled == {"key-cccc"}
    await asyncio.sleep(0.3)
    assert set((await two.cooldowns.seen(provider)).cooling) == {"key-aaaa"}
    assert (await two.cooldowns.seen("gemini-" + provider)).cooling == {}


async def test_usage_adds_up_across_processes(redis_server: RedisServer) -> None:  # noqa: F811
    one, two = Process(redis_server.addr), Process(redis_server.addr)
    tenant, expires = f"team-{id(one)}", 4_000_000_000.0
    first = {("gpt-4o", "prompt"): 3, ("gpt-4o", "requests"): 1}
    await one.ledger.add(tenant, "day:x", first, expires)
    await two.ledger.add(tenant, "day:x", {("gpt-4o", "prompt"): 4, ("a|b", "saved"): 2}, expires)
    expected = {("gpt-4o", "prompt"): 7, ("gpt-4o", "requests"): 1, ("a|b", "saved"): 2}
    assert await one.ledger.read(tenant, "day:x") == expected
    assert await Process(redis_server.addr).ledger.read(tenant, "day:x") == expected
    assert await one.ledger.read(tenant, "day:y") == {}


async def test_redis_down_means_local_state_said_once_then_back(
    disposable_redis: RedisServer,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    process = Process(disposable_redis.addr, rate=1.0, burst=1)
    await process.ledger.add("team-a", "day:x", {("m", "prompt"): 5}, 4_000_000_000.0)
    disposable_redis.stop()
    with caplog.at_level(logging.WARNING, "llm_proxy.state"):
        for _ in range(3):
            assert (await process.cooldowns.seen("openai")).cooling == {}
        assert await process.rate.take("team-a") == 0.0  # the local bucket
        assert await process.rate.take("team-a") > 0.0
        await process.ledger.add("team-a", "day:x", {("m", "prompt"): 2}, 4_000_000_000.0)
        assert await process.ledger.read("team-a", "day:x") == {("m", "prompt"): 7}
    assert [r.message for r in caplog.records].count(caplog.records[0].message) == 1
    assert "unreachable" in caplog.records[0].message
    assert process.gauge.values == [True, False]
    disposable_redis.start()  # empty: the test image keeps no data
    await asyncio.sleep(RETRY_EVERY + 0.3)  # what waited is sent without another request
    assert process.gauge.values == [True, False, True]
    other = Process(disposable_redis.addr)
    assert await other.ledger.read("team-a", "day:x") == {("m", "prompt"): 2}
    await process.ledger.add("team-a", "day:x", {("m", "prompt"): 1}, 4_000_000_000.0)
    assert await other.ledger.read("team-a", "day:x") == {("m", "prompt"): 3}


async def test_a_slow_redis_costs_one_state_timeout_then_is_left_alone(
    disposable_redis: RedisServer,  # noqa: F811
) -> None:
    process = Process(disposable_redis.addr)
    assert await process.rate.take("t") == 0.0
    disposable_redis.pause()
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        await process.rate.take("t")  # times out: local bucket
        first = loop.time() - started
        started = loop.time()
        await process.cooldowns.seen("openai")  # left alone: no wait
        second = loop.time() - started
    finally:
        disposable_redis.unpause()
    assert first < 1.0
    assert second < TIMEOUT
    assert process.gauge.values == [True, False]


async def test_the_local_ledger_survives_a_reopen(tmp_path: Path) -> None:
    ledger = SqliteLedger(tmp_path)
    await ledger.add("team-a", "day:x", {("m", "prompt"): 2, ("m", "requests"): 1}, 4e9)
    await ledger.add("team-a", "day:x", {("m", "prompt"): 3}, 4e9)
    await ledger.add("team-a", "day:old", {("m", "prompt"): 9}, 1.0)  # expired: swept
    await ledger.close()
    reopened = SqliteLedger(tmp_path)
    assert await reopened.read("team-a", "day:x") == {("m", "prompt"): 5, ("m", "requests"): 1}
    await reopened.add("team-b", "day:x", {("m", "saved"): 1}, 4e9)
    assert await reopened.read("team-a", "day:old") == {}
    await reopened.close()


async def test_concurrent_additions_to_the_local_ledger_all_count(tmp_path: Path) -> None:
    ledger = SqliteLedger(tmp_path)
    await asyncio.gather(
        *(ledger.add("team-a", "day:x", {("m", "prompt"): 1}, 4e9) for _ in range(200)),
        *(ledger.add("team-b", "day:x", {("m", "saved"): 2}, 4e9) for _ in range(100)),
    )
    assert await ledger.read("team-a", "day:x") == {("m", "prompt"): 200}
    await ledger.close()
    reopened = SqliteLedger(tmp_path)
    assert await reopened.read("team-b", "day:x") == {("m", "saved"): 200}
    await reopened.close()
