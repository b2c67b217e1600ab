"""Shared key cooldowns, usage and budgets in the use case, with fakes for the shared state."""

from __future__ import annotations

import pytest

from application.embeddings import EmbeddingService
from application.inference import InferenceService
from application.metering import Metering
from application.resilience import Upstream
from domain.backoff import BackoffPolicy
from domain.circuit_breaker import CircuitBreaker
from domain.errors import BudgetExhausted, NoUsableKey, RateLimited
from domain.key_pool import ApiKey, KeyPool
from domain.model import CacheStatus, EmbeddingRequest, InferenceRequest, Message, Role
from domain.routing import ModelRouter
from domain.usage import Budget, Budgets, Window
from tests.fakes import (
    DictCache,
    Fail,
    FakeClock,
    FakeProvider,
    FakeSleeper,
    FixedRandom,
    MemoryLedger,
    RecordingMetrics,
    RecordingTracer,
    Reply,
    SharedCooldowns,
    collected,
)

KEYS = [ApiKey("sk-shared-one"), ApiKey("sk-shared-two")]
# FakeClock.wall() is 1.8e9 (2027-01-15T08:00Z) + now(): this start is 2027-01-16T01:00Z
START = 61_200.0
TODAY = "day:2027-01-16"


class Process:
    """One proxy process: its own key pool and breaker, the shared board and ledger."""

    def __init__(
        self,
        provider: FakeProvider,
        clock: FakeClock,
        board: SharedCooldowns | None,
        ledger: MemoryLedger,
        budgets: Budgets | None = None,
        cache: DictCache | None = None,
    ) -> None:
        self.provider, self.metrics = provider, RecordingMetrics()
        self.keys = KeyPool("openai", KEYS, 60.0)
        upstreams = {"openai": Upstream(provider, self.keys, CircuitBreaker("openai", 5, 30.0))}
        self.metering = Metering(ledger, budgets or Budgets(), clock, self.metrics)
        self.service = InferenceService(
            router=ModelRouter(upstreams), upstreams=upstreams, cache=cache,
            backoff=BackoffPolicy(2, wait_initial=1.0, wait_max=8.0), request_timeout=30.0,
            clock=clock, sleeper=FakeSleeper(clock), random=FixedRandom(0.5),
            metrics=self.metrics, tracer=RecordingTracer(), cooldowns=board,
            metering=self.metering,
        )  # fmt: skip
        self.embeddings = EmbeddingService(
            router=ModelRouter(upstreams), upstreams=upstreams,
            backoff=BackoffPolicy(2, wait_initial=1.0, wait_max=8.0), request_timeout=30.0,
            clock=clock, sleeper=FakeSleeper(clock), random=FixedRandom(0.5),
            metrics=self.metrics, tracer=RecordingTracer(), cooldowns=board,
            metering=self.metering,
        )  # fmt: skip


def ask(prompt: str = "one two three", tenant: str = "team-a") -> InferenceRequest:
    return InferenceRequest("gpt-4o", (Message(Role.USER, prompt),), tenant=tenant)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


async def test_a_key_cooled_by_one_process_is_never_lent_by_another(clock: FakeClock) -> None:
    board, ledger = SharedCooldowns(clock), MemoryLedger()
    first = Process(
        FakeProvider("openai", Fail(RateLimited("slow", retry_after=30.0)), Reply("ok")),
        clock, board, ledger,
    )  # fmt: skip
    second = Process(FakeProvider("openai", *[Reply("ok")] * 4), clock, board, ledger)
    await first.service.infer(ask("a"))
    cooled = first.provider.calls[0].key
    for prompt in "bcde":
        await second.service.infer(ask(prompt))
    assert {c.key for c in second.provider.calls} == {k.fingerprint for k in KEYS} - {cooled}
    clock.advance(31.0)  # the cooldown passed: the key is lent again
    await second.service.infer(ask("f"))
    await second.service.infer(ask("g"))
    assert cooled in {c.key for c in second.provider.calls[-2:]}


async def test_without_the_shared_board_the_other_process_tries_the_cooled_key(
    clock: FakeClock,
) -> None:
    """The control for the test above: the pool alone does not know."""
    ledger = MemoryLedger()
    first = Process(
        FakeProvider("openai", Fail(RateLimited("slow", retry_after=30.0)), Reply("ok")),
        clock, None, ledger,
    )  # fmt: skip
    second = Process(FakeProvider("openai", *[Reply("ok")] * 2), clock, None, ledger)
    await first.service.infer(ask("a"))
    await second.service.infer(ask("b"))
    await second.service.infer(ask("c"))
    assert first.provider.calls[0].key in {c.key for c in second.provider.calls}


async def test_every_key_cooling_elsewhere_says_when_to_retry(clock: FakeClock) -> None:
    board = SharedCooldowns(clock)
    for key in KEYS:
        board.cooled("openai", key.fingerprint, 120.0)
    process = Process(FakeProvider("openai", Reply("ok")), clock, board, MemoryLedger())
    with pytest.raises(NoUsableKey) as raised:
        await process.service.infer(ask())
    assert raised.value.retry_after == pytest.approx(120.0)
    assert process.provider.calls == []


async def test_a_key_rejected_elsewhere_is_disabled_here(clock: FakeClock) -> None:
    board = SharedCooldowns(clock)
    board.rejected("openai", KEYS[0].fingerprint)
    process = Process(FakeProvider("openai", *[Reply("ok")] * 3), clock, board, MemoryLedger())
    for prompt in "abc":
        await process.service.infer(ask(prompt))
    assert {c.key for c in process.provider.calls} == {KEYS[1].fingerprint}


async def test_usage_is_counted_per_tenant_and_model(clock: FakeClock) -> None:
    ledger = MemoryLedger()
    process = Process(FakeProvider("openai", Reply("four five"), Reply("six")), clock, None, ledger)
    await process.service.infer(ask("one two three"))
    await process.service.infer(ask("x", tenant=""))
    await process.service.drain()
    assert ledger.counts[("team-a", TODAY)] == {
        ("gpt-4o", "prompt"): 3, ("gpt-4o", "completion"): 2, ("gpt-4o", "requests"): 1,
    }  # fmt: skip
    assert ledger.counts[("anonymous", TODAY)][("gpt-4o", "completion")] == 1
    assert process.metrics.tenant_tokens_counted[("team-a", "gpt-4o", "prompt")] == 3


async def test_a_tenant_past_its_budget_is_refused_before_any_upstream_call(
    clock: FakeClock,
) -> None:
    ledger = MemoryLedger()
    budgets = Budgets(None, {"team-a": Budget(5, Window.HOUR)})
    replies = [Reply("four five six")] * 3
    process = Process(FakeProvider("openai", *replies), clock, None, ledger, budgets)
    await process.service.infer(ask("one two"))  # 2 + 3 = 5 tokens: the budget is used up
    await process.service.drain()
    with pytest.raises(BudgetExhausted) as raised:
        await process.service.infer(ask("again"))
    with pytest.raises(BudgetExhausted):
        await collected(process.service.stream(ask("streamed")))
    assert len(process.provider.calls) == 1
    assert raised.value.retry_after == pytest.approx(3600.0)  # the hour ends at 02:00
    await process.service.infer(ask("other tenant", tenant="team-b"))  # no budget: unaffected
    clock.advance(3600.0)  # the next hour: a fresh budget
    await process.service.infer(ask("next hour"))
    assert len(process.provider.calls) == 3


async def test_cache_answers_cost_nothing_and_are_served_past_the_budget(clock: FakeClock) -> None:
    ledger = MemoryLedger()
    budgets = Budgets(Budget(5, Window.DAY))
    process = Process(
        FakeProvider("openai", Reply("four five six")), clock, None, ledger, budgets, DictCache()
    )
    await process.service.infer(ask("one two"))
    await process.service.drain()
    cached = await process.service.infer(ask("one two"))
    await process.service.drain()
    assert cached.cache.status is CacheStatus.EXACT
    counts = ledger.counts[("team-a", TODAY)]
    assert counts[("gpt-4o", "saved")] == 5
    assert (await process.metering.spent("team-a")).tokens == 5
    assert counts[("gpt-4o", "requests")] == 2


async def test_a_broken_ledger_never_fails_a_request(clock: FakeClock) -> None:
    ledger = MemoryLedger()
    ledger.broken = True
    budgets = Budgets(Budget(1, Window.DAY))
    provider = FakeProvider("openai", Reply("ok"), Reply("ok"))
    process = Process(provider, clock, None, ledger, budgets)
    await process.service.infer(ask("a"))
    await process.service.infer(ask("b"))
    await process.service.drain()
    assert len(process.provider.calls) == 2


def embed(text: str = "hello", tenant: str = "team-a") -> EmbeddingRequest:
    return EmbeddingRequest("text-embedding-3-small", (text,), tenant=tenant)


async def test_embeddings_never_use_a_key_another_process_saw_cooling(clock: FakeClock) -> None:
    board = SharedCooldowns(clock)
    first = Process(
        FakeProvider("openai", Fail(RateLimited("slow", retry_after=30.0)), Reply("ok")),
        clock, board, MemoryLedger(),
    )  # fmt: skip
    second = Process(FakeProvider("openai"), clock, board, MemoryLedger())
    await first.embeddings.embed(embed())
    cooled = first.provider.embedded[0][0]
    for text in "abcd":
        await second.embeddings.embed(embed(text))
    assert {fingerprint for fingerprint, _ in second.provider.embedded} == {
        k.fingerprint for k in KEYS
    } - {cooled}


async def test_embeddings_are_metered_and_refused_past_the_budget(clock: FakeClock) -> None:
    ledger = MemoryLedger()
    budgets = Budgets(None, {"team-a": Budget(8, Window.HOUR)})
    process = Process(FakeProvider("openai"), clock, None, ledger, budgets)
    await process.embeddings.embed(embed("12345678"))  # the fake counts a token per character
    spent = await process.metering.spent("team-a")
    assert (spent.tokens, spent.period) == (8, "hour:2027-01-16T01")
    assert ledger.counts[("team-a", spent.period)] == {
        ("text-embedding-3-small", "prompt"): 8, ("text-embedding-3-small", "requests"): 1,
    }  # fmt: skip
    with pytest.raises(BudgetExhausted):
        await process.embeddings.embed(embed("again"))
    with pytest.raises(BudgetExhausted):  # chat shares the budget
        await process.service.infer(ask("a chat"))
    assert len(process.provider.embedded) == 1
    await process.embeddings.embed(embed("other", tenant="team-b"))  # no budget: unaffected
    assert len(process.provider.embedded) == 2
