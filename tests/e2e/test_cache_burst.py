"""The embedded cache under concurrency, over real gRPC: a burst of distinct prompts at 8
concurrent calls is indexed (half through their lookups' vectors, half, asked with skip_lookup,
through the index backlog), and their case and punctuation variants, sent at 8 concurrent
calls once the backlog drained, are semantic hits. The full 600-prompt run is
benchmarks/cache_burst.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from adapters.inbound.grpc.generated import proxy_pb2 as pb
from tests.harness import SLACK, Stack, scrape, stack

PROMPTS = 120
CONCURRENCY = 8
SUBJECTS = ("the invoice", "my parcel", "the warranty", "a refund", "the password", "my account")
QUESTIONS = (
    "How long does {s} take for order {n}?",
    "Who handles {s} for customer {n}?",
    "Why was {s} for ticket {n} delayed?",
    "Where can I check {s} for order {n}?",
)


def prompts(count: int) -> list[str]:
    return [
        QUESTIONS[i % len(QUESTIONS)].format(s=SUBJECTS[i // len(QUESTIONS) % len(SUBJECTS)],
                                             n=1000 + i)
        for i in range(count)
    ]  # fmt: skip


def variant(prompt: str) -> str:
    """Another case, no question mark: another exact key, the same question."""
    return prompt.lower().rstrip("?")


Call = Callable[[], Awaitable[pb.InferenceResponse]]


async def at_most(concurrency: int, calls: list[Call]) -> list[pb.InferenceResponse]:
    gate = asyncio.Semaphore(concurrency)

    async def one(call: Call) -> pb.InferenceResponse:
        async with gate:
            return await call()

    return list(await asyncio.gather(*(one(call) for call in calls)))


async def backlog_drained(s: Stack, seconds: float = 120.0) -> None:
    await s.proxy.container.inference().drain()  # the stores, which fill the backlog
    deadline = time.monotonic() + seconds
    while (await scrape(s))[("cache_index_backlog", ())] > 0:
        assert time.monotonic() < deadline, "the index backlog did not drain"
        await asyncio.sleep(0.1)


async def test_a_burst_is_indexed_and_its_variants_hit_at_8_concurrent(tmp_path: Path) -> None:
    async with stack(cache_mode="embedded", cache_dir=str(tmp_path), cache_ttl="10m", **SLACK) as s:
        asked = prompts(PROMPTS)

        def first(i: int, prompt: str) -> Call:
            control = pb.CacheControl(skip_lookup=i % 2 == 1)  # no lookup: no vector to hand on
            return lambda: s.stub.Infer(pb.InferenceRequest(model="gpt-4o-mini", prompt=prompt,
                                                            cache=control))  # fmt: skip

        burst = await at_most(CONCURRENCY, [first(i, p) for i, p in enumerate(asked)])
        assert all(r.cache.status in (pb.CACHE_STATUS_MISS, pb.CACHE_STATUS_BYPASS) for r in burst)
        await backlog_drained(s)

        again = await at_most(CONCURRENCY, [
            lambda p=p: s.stub.Infer(pb.InferenceRequest(model="gpt-4o-mini", prompt=variant(p)))
            for p in asked
        ])  # fmt: skip
        semantic = [r.cache.status == pb.CACHE_STATUS_SEMANTIC for r in again]
        looked_up, skipped_lookup = semantic[0::2], semantic[1::2]
        assert sum(looked_up) >= 0.9 * len(looked_up)
        assert sum(skipped_lookup) >= 0.9 * len(skipped_lookup)  # indexed by the backlog
        assert all(r.content == b.content for r, b, hit in zip(again, burst, semantic, strict=True)
                   if hit)  # fmt: skip
        metrics = await scrape(s)
        assert metrics[("cache_index_dropped_total", (("reason", "full"),))] == 0
