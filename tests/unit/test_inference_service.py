from __future__ import annotations

import asyncio
import logging

import pytest

from application.inference import InferenceService
from application.resilience import Upstream
from domain.backoff import BackoffPolicy
from domain.circuit_breaker import BreakerState, CircuitBreaker
from domain.errors import (
    CircuitOpen,
    ConnectionsExhausted,
    DeadlineExceeded,
    InvalidRequest,
    KeyRejected,
    MalformedAnswer,
    NoUsableKey,
    RateLimited,
    UnknownModel,
    UpstreamFault,
    UpstreamRejected,
    UpstreamUnavailable,
)
from domain.key_pool import ApiKey, KeyPool
from domain.model import (
    Answer,
    CacheControl,
    CacheStatus,
    Delta,
    FinishReason,
    InferenceRequest,
    Message,
    Role,
)
from domain.routing import ModelRouter, Route
from tests.fakes import (
    DictCache,
    Fail,
    FakeClock,
    FakeProvider,
    FakeSleeper,
    FixedRandom,
    Hang,
    RecordingMetrics,
    RecordingTracer,
    Reply,
    collected,
)


class World:
    """The service with fakes around it, and the fakes at hand for assertions."""

    def __init__(
        self,
        provider: FakeProvider,
        keys: int = 2,
        max_retries: int = 3,
        threshold: int = 5,
        cache: DictCache | None = None,
        request_timeout: float = 30.0,
        routes: dict[str, Route] | None = None,
        upstream_timeout: float | None = None,
    ) -> None:
        self.clock = FakeClock()
        self.sleeper = FakeSleeper(self.clock)
        self.metrics = RecordingMetrics()
        self.tracer = RecordingTracer()
        self.provider = provider
        self.keys = KeyPool(provider.name, [ApiKey(f"sk-test-{i}") for i in range(keys)], 60.0)
        self.breaker = CircuitBreaker(provider.name, threshold, cooldown=30.0)
        self.cache = cache
        upstreams = {provider.name: Upstream(provider, self.keys, self.breaker)}
        self.service = InferenceService(
            router=ModelRouter(upstreams, routes),
            upstreams=upstreams,
            cache=cache,
            backoff=BackoffPolicy(max_retries, wait_initial=1.0, wait_max=8.0),
            request_timeout=request_timeout,
            clock=self.clock,
            sleeper=self.sleeper,
            random=FixedRandom(0.5),
            metrics=self.metrics,
            tracer=self.tracer,
            upstream_timeout=upstream_timeout,
        )

    async def stream(self, request: InferenceRequest) -> tuple[list[str], Answer]:
        return await collected(self.service.stream(request))


def ask(prompt: str = "hi", model: str = "gpt-4o-mini", **kw: object) -> InferenceRequest:
    return InferenceRequest(model, (Message(Role.USER, prompt),), **kw)  # type: ignore[arg-type]


def openai(*script: object) -> FakeProvider:
    return FakeProvider("openai", *script)  # type: ignore[arg-type]


async def test_unary_answer_comes_from_the_routed_provider() -> None:
    world = World(openai(Reply("four")))
    answer = await world.service.infer(ask("2+2?"))
    assert answer.completion.content == "four"
    assert answer.completion.provider == "openai"
    assert answer.cache.status is CacheStatus.BYPASS
    assert world.metrics.attempts == [("openai", "success")]


async def test_unknown_model_names_the_routable_ones() -> None:
    world = World(openai())
    with pytest.raises(UnknownModel, match=r"gpt-\*"):
        await world.service.infer(ask(model="claude-3"))
    with pytest.raises(UnknownModel, match="no API keys"):
        await world.service.infer(ask(model="gemini-2.0-flash"))
    assert world.provider.calls == []


async def test_alias_sends_the_upstream_model_name() -> None:
    world = World(openai(), routes={"fast": Route("openai", "gpt-4o-mini")})
    await world.service.infer(ask(model="fast"))
    assert world.provider.calls[0].request.model == "gpt-4o-mini"


async def test_429_moves_to_the_next_key_without_waiting() -> None:
    world = World(openai(Fail(RateLimited("slow down", retry_after=20.0)), Reply("ok")))
    answer = await world.service.infer(ask())
    assert answer.completion.content == "ok"
    first, second = (c.key for c in world.provider.calls)
    assert first != second
    assert world.sleeper.sleeps == []
    assert world.keys.cooling_down(world.clock.now()) == 1


async def test_all_keys_limited_is_resource_exhausted_with_the_earliest_reset() -> None:
    world = World(
        openai(
            Fail(RateLimited("limited", retry_after=90.0)),
            Fail(RateLimited("limited", retry_after=45.0)),
        )
    )
    with pytest.raises(NoUsableKey) as caught:
        await world.service.infer(ask())
    assert caught.value.retry_after == pytest.approx(45.0)
    # a rate limit is one key's problem, not the provider's
    assert world.breaker.state(world.clock.now()) is BreakerState.CLOSED


async def test_a_short_rate_limit_is_waited_out_within_the_deadline() -> None:
    world = World(openai(Fail(RateLimited("limited", 2.0)), Reply("late")), keys=1)
    answer = await world.service.infer(ask())
    assert answer.completion.content == "late"
    assert world.sleeper.sleeps == [pytest.approx(2.0)]


async def test_rejected_key_is_disabled_and_the_next_key_answers() -> None:
    world = World(openai(Fail(KeyRejected("invalid key")), Reply("ok")))
    assert (await world.service.infer(ask())).completion.content == "ok"
    assert world.keys.disabled() == 1
    await world.service.infer(ask("again"))
    assert len({c.key for c in world.provider.calls[1:]}) == 1


async def test_every_key_rejected_says_so() -> None:
    world = World(openai(Fail(KeyRejected("bad")), Fail(KeyRejected("bad"))))
    with pytest.raises(NoUsableKey) as caught:
        await world.service.infer(ask())
    assert caught.value.retry_after is None


async def test_5xx_is_retried_with_backoff_then_answers() -> None:
    world = World(openai(Fail(UpstreamFault("503")), Fail(UpstreamFault("502")), Reply("ok")))
    answer = await world.service.infer(ask())
    assert answer.completion.content == "ok"
    # u = 0.5: 0.5 * 1s, then 0.5 * 2s
    assert world.sleeper.sleeps == [pytest.approx(0.5), pytest.approx(1.0)]


async def test_retries_stop_after_max_retries() -> None:
    world = World(openai(*[Fail(UpstreamFault("500"))] * 10), max_retries=2)
    with pytest.raises(UpstreamUnavailable, match="3 attempts"):
        await world.service.infer(ask())
    assert len(world.provider.calls) == 3


async def test_client_errors_are_not_retried() -> None:
    world = World(openai(Fail(UpstreamRejected("context too long"))))
    with pytest.raises(UpstreamRejected):
        await world.service.infer(ask())
    assert len(world.provider.calls) == 1
    assert world.breaker.state(world.clock.now()) is BreakerState.CLOSED


async def test_retry_after_is_a_floor_for_the_backoff() -> None:
    world = World(openai(Fail(UpstreamFault("503", retry_after=4.0)), Reply()))
    await world.service.infer(ask())
    assert world.sleeper.sleeps == [pytest.approx(4.0)]


async def test_retries_never_sleep_past_the_deadline() -> None:
    world = World(openai(*[Fail(UpstreamFault("500"))] * 10), max_retries=10, request_timeout=5.0)
    start = world.clock.now()
    with pytest.raises(DeadlineExceeded, match="last error: 500"):
        await world.service.infer(ask())
    assert world.clock.now() - start < 5.0
    assert sum(world.sleeper.sleeps) < 5.0


async def test_client_deadline_shorter_than_request_timeout_wins() -> None:
    world = World(openai(*[Fail(UpstreamFault("500"))] * 10), max_retries=10)
    with pytest.raises(DeadlineExceeded):
        await world.service.infer(ask(), time_left=1.2)
    assert sum(world.sleeper.sleeps) < 1.2


async def test_breaker_opens_after_threshold_then_fails_fast_then_recovers() -> None:
    world = World(openai(*[Fail(UpstreamFault("500"))] * 3), max_retries=0, threshold=3)
    for _ in range(3):
        with pytest.raises(UpstreamUnavailable):
            await world.service.infer(ask())
    assert world.breaker.state(world.clock.now()) is BreakerState.OPEN
    with pytest.raises(CircuitOpen):
        await world.service.infer(ask())
    assert len(world.provider.calls) == 3
    world.clock.advance(30.0)
    answer = await world.service.infer(ask("probe"))
    assert answer.completion.content == "echo: probe"
    assert world.breaker.state(world.clock.now()) is BreakerState.CLOSED


async def test_cancelling_the_caller_cancels_the_upstream_call() -> None:
    world = World(openai(Hang()))
    task = asyncio.create_task(world.service.infer(ask()))
    await world.provider.entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert world.provider.cancelled == 1
    assert world.metrics.attempts == [("openai", "aborted")]


async def test_identical_concurrent_requests_share_one_upstream_call() -> None:
    world = World(openai(Reply("shared")))
    world.provider.gate = asyncio.Event()
    first = asyncio.create_task(world.service.infer(ask("same")))
    second = asyncio.create_task(world.service.infer(ask("same")))
    other = asyncio.create_task(world.service.infer(ask("different")))
    await asyncio.sleep(0)
    world.provider.gate.set()
    a, b, c = await asyncio.gather(first, second, other)
    assert a.completion.content == b.completion.content == "shared"
    assert c.completion.content == "echo: different"
    assert len(world.provider.calls) == 2


async def test_one_coalesced_caller_leaving_does_not_cancel_the_others() -> None:
    world = World(openai(Reply("shared")))
    world.provider.gate = asyncio.Event()
    leaving = asyncio.create_task(world.service.infer(ask("same")))
    staying = asyncio.create_task(world.service.infer(ask("same")))
    await world.provider.entered.wait()
    leaving.cancel()
    await asyncio.sleep(0)
    world.provider.gate.set()
    assert (await staying).completion.content == "shared"
    assert world.provider.cancelled == 0


async def test_stream_yields_deltas_then_the_answer() -> None:
    world = World(openai(Reply("a b c", chunks=("a ", "b ", "c"))))
    deltas, answer = await world.stream(ask())
    assert deltas == ["a ", "b ", "c"]
    assert answer.completion.content == "a b c"
    assert answer.completion.finish_reason is FinishReason.STOP


async def test_stream_retries_before_the_first_chunk() -> None:
    world = World(openai(Fail(UpstreamFault("503")), Fail(RateLimited("429")), Reply("ok")))
    deltas, _ = await world.stream(ask())
    assert deltas == ["ok"]
    assert len(world.provider.calls) == 3


async def test_stream_failure_after_the_first_chunk_is_an_error_not_a_retry() -> None:
    world = World(openai(Reply("a b", chunks=("a", "b"), fail_after_chunks=UpstreamFault("reset"))))
    received: list[str] = []

    async def consume() -> None:
        async for event in world.service.stream(ask()):
            assert isinstance(event, Delta)
            received.append(event.content)

    with pytest.raises(UpstreamFault, match="reset"):
        await consume()
    assert received == ["a", "b"]
    assert len(world.provider.calls) == 1
    assert world.metrics.attempts == [("openai", "upstream_fault")]


async def test_closing_a_stream_closes_the_upstream_stream() -> None:
    world = World(openai(Reply("a b", chunks=("a", "b"))))
    events = world.service.stream(ask())
    assert isinstance(await anext(events), Delta)
    await events.aclose()
    assert world.provider.cancelled == 1
    assert world.metrics.attempts == [("openai", "aborted")]


async def test_cache_hit_skips_the_provider_and_says_so() -> None:
    cache = DictCache()
    world = World(openai(Reply("cached answer")), cache=cache)
    first = await world.service.infer(ask("q"))
    await world.service.drain()
    second = await world.service.infer(ask("q"))
    assert first.cache.status is CacheStatus.MISS
    assert second.cache.status is CacheStatus.EXACT
    assert second.completion.content == "cached answer"
    assert len(world.provider.calls) == 1


async def test_cache_hit_replays_through_stream() -> None:
    cache = DictCache()
    world = World(openai(Reply("x" * 150)), cache=cache)
    await world.service.infer(ask("q"))
    await world.service.drain()
    deltas, answer = await world.stream(ask("q"))
    assert "".join(deltas) == "x" * 150
    assert len(deltas) > 1
    assert answer.cache.status is CacheStatus.EXACT


async def test_truncated_answers_and_skip_store_are_not_cached() -> None:
    cache = DictCache()
    world = World(openai(Reply("cut", finish=FinishReason.LENGTH), Reply("kept")), cache=cache)
    await world.service.infer(ask("q", max_tokens=1))
    await world.service.infer(ask("q2", cache=CacheControl(skip_store=True)))
    await world.service.drain()
    assert cache.entries == {}


async def test_skip_lookup_goes_upstream_even_when_cached() -> None:
    cache = DictCache()
    world = World(openai(Reply("one"), Reply("two")), cache=cache)
    await world.service.infer(ask("q"))
    await world.service.drain()
    answer = await world.service.infer(ask("q", cache=CacheControl(skip_lookup=True)))
    assert answer.completion.content == "two"
    assert answer.cache.status is CacheStatus.BYPASS


async def test_a_broken_cache_fails_open() -> None:
    cache = DictCache()
    cache.broken = True
    world = World(openai(Reply("fine")), cache=cache)
    answer = await world.service.infer(ask())
    await world.service.drain()
    assert answer.completion.content == "fine"
    assert world.metrics.cache_errors == ["lookup", "store"]


def test_invalid_requests_are_rejected_before_any_call() -> None:
    with pytest.raises(InvalidRequest):
        ask("   ")


async def test_spans_show_attempts_retries_and_gen_ai_attributes_without_prompts() -> None:
    world = World(
        openai(Fail(UpstreamFault("503")), Fail(RateLimited("429")), Reply("the answer text"))
    )
    await world.service.infer(ask("a secret prompt", temperature=0.3, max_tokens=50))
    (request,) = world.tracer.named("inference")
    attempts = world.tracer.named("chat gpt-4o-mini")
    assert len(attempts) == 3
    assert all(a.parent is request and a.ended for a in attempts)
    assert [a.attributes["llm_proxy.outcome"] for a in attempts] == [
        "upstream_fault",
        "rate_limited",
        "success",
    ]
    assert attempts[0].errors == ["UpstreamFault"]
    last = attempts[-1].attributes
    assert last["gen_ai.system"] == "openai"
    assert last["gen_ai.request.temperature"] == 0.3
    assert last["gen_ai.request.max_tokens"] == 50
    assert last["gen_ai.usage.output_tokens"] == 3
    assert last["gen_ai.response.finish_reasons"] == "stop"
    assert str(last["llm_proxy.key"]).startswith("key-")
    assert [name for name, _ in request.events] == ["retry", "key_switch"]
    recorded = repr([(s.attributes, s.events) for s in world.tracer.spans])
    assert "secret prompt" not in recorded
    assert "the answer text" not in recorded
    assert "sk-test" not in recorded


# -- coalescing (DESIGN §5) -------------------------------------------------------------------


async def test_coalescing_never_crosses_tenants_or_cache_control() -> None:
    world = World(openai())
    world.provider.gate = asyncio.Event()
    requests = [
        ask("same", tenant="tenant-a"),
        ask("same", tenant="tenant-b"),
        ask("same", tenant="tenant-a", cache=CacheControl(skip_store=True)),
        ask("same", tenant="tenant-a", cache=CacheControl(skip_lookup=True)),
        ask("same", tenant="tenant-a"),
    ]
    calls = [asyncio.create_task(world.service.infer(r)) for r in requests]
    await asyncio.sleep(0)
    world.provider.gate.set()
    await asyncio.gather(*calls)
    assert len(world.provider.calls) == 4  # only the two identical tenant-a requests share
    assert [c.request.cache.skip_store for c in world.provider.calls].count(True) == 1


async def test_a_coalesced_caller_keeps_its_own_longer_deadline() -> None:
    world = World(openai(Reply("late but fine")))
    world.provider.gate = asyncio.Event()
    short = asyncio.create_task(world.service.infer(ask("same"), time_left=0.05))
    long = asyncio.create_task(world.service.infer(ask("same"), time_left=5.0))
    with pytest.raises(DeadlineExceeded):
        await short
    world.provider.gate.set()
    assert (await long).completion.content == "late but fine"
    assert len(world.provider.calls) == 1
    assert world.provider.cancelled == 0


async def test_a_request_after_the_last_waiter_left_gets_a_call_of_its_own() -> None:
    world = World(openai(Hang(), Reply("fresh")))
    leaving = asyncio.create_task(world.service.infer(ask("same")))
    await world.provider.entered.wait()
    leaving.cancel()
    await asyncio.sleep(0)  # the cancelled call has not finished its cleanup yet
    answer = await world.service.infer(ask("same"))
    assert answer.completion.content == "fresh"
    assert len(world.provider.calls) == 2


# -- whose timeout: the proxy's own is the provider's failure, a client's is not ---------------


async def test_a_provider_silent_until_the_request_timeout_has_failed() -> None:
    world = World(openai(Hang()), request_timeout=0.05)
    with pytest.raises(DeadlineExceeded):
        await world.service.infer(ask())
    assert world.metrics.attempts == [("openai", "timeout")]
    assert world.breaker._failures == 1


async def test_a_shorter_client_deadline_is_not_the_providers_failure() -> None:
    world = World(openai(Hang()))
    with pytest.raises(DeadlineExceeded):
        await world.service.infer(ask(), time_left=0.05)
    assert world.metrics.attempts == [("openai", "aborted")]
    assert world.breaker._failures == 0


async def test_a_hanging_provider_opens_the_breaker() -> None:
    world = World(openai(*[Hang()] * 10), threshold=3, request_timeout=0.05)
    for _ in range(3):
        with pytest.raises(DeadlineExceeded):
            await world.service.infer(ask())
    with pytest.raises(CircuitOpen):
        await world.service.infer(ask())
    assert len(world.provider.calls) == 3


async def test_a_silent_stream_until_the_request_timeout_has_failed() -> None:
    world = World(openai(Hang()), request_timeout=0.05)
    with pytest.raises(DeadlineExceeded):
        await world.stream(ask())
    assert world.metrics.attempts == [("openai", "timeout")]


async def test_upstream_timeout_ends_a_silent_attempt_and_retries() -> None:
    world = World(openai(Hang(), Reply("second try")), upstream_timeout=0.05)
    answer = await world.service.infer(ask())
    assert answer.completion.content == "second try"
    assert world.metrics.attempts == [("openai", "upstream_fault"), ("openai", "success")]
    assert world.provider.cancelled == 1


async def test_upstream_timeout_bounds_the_first_event_of_a_stream() -> None:
    world = World(openai(Hang(), Reply("a b", chunks=("a", "b"))), upstream_timeout=0.05)
    deltas, _ = await world.stream(ask())
    assert deltas == ["a", "b"]
    assert world.metrics.attempts == [("openai", "upstream_fault"), ("openai", "success")]


# -- one rule for waiting on a key ------------------------------------------------------------


async def test_keys_cooling_at_the_start_are_waited_for_as_after_a_429() -> None:
    world = World(openai(Reply("after the reset")), keys=1)
    world.keys.cool_down(world.keys.keys[0], world.clock.now(), 2.0)
    answer = await world.service.infer(ask())
    assert answer.completion.content == "after the reset"
    assert world.sleeper.sleeps == [pytest.approx(2.0)]


async def test_keys_cooling_past_the_deadline_at_the_start_are_resource_exhausted() -> None:
    world = World(openai(), keys=1, request_timeout=5.0)
    world.keys.cool_down(world.keys.keys[0], world.clock.now(), 60.0)
    with pytest.raises(NoUsableKey) as caught:
        await world.service.infer(ask())
    assert caught.value.retry_after == pytest.approx(60.0)
    assert world.sleeper.sleeps == []
    assert world.provider.calls == []


# -- faults that are not the provider's, or that retrying cannot fix --------------------------


async def test_the_same_malformed_answer_is_retried_once_and_counted_once() -> None:
    world = World(openai(*[Fail(MalformedAnswer("not JSON"))] * 4), threshold=2)
    with pytest.raises(UpstreamUnavailable, match="2 attempts"):
        await world.service.infer(ask())
    assert len(world.provider.calls) == 2
    assert world.breaker.state(world.clock.now()) is BreakerState.CLOSED
    assert world.metrics.attempts == [("openai", "malformed")] * 2


async def test_the_proxys_own_full_pool_is_neither_retried_nor_the_providers_failure() -> None:
    world = World(openai(Fail(ConnectionsExhausted("pool full", 1.0))), threshold=1)
    with pytest.raises(ConnectionsExhausted):
        await world.service.infer(ask())
    assert len(world.provider.calls) == 1
    assert world.breaker.state(world.clock.now()) is BreakerState.CLOSED
    assert world.metrics.attempts == [("openai", "proxy_busy")]


async def test_breaker_transitions_are_logged_once_each(caplog: pytest.LogCaptureFixture) -> None:
    world = World(openai(*[Fail(UpstreamFault("500"))] * 2), max_retries=0, threshold=2)
    with caplog.at_level(logging.INFO, logger="application.resilience"):
        for _ in range(2):
            with pytest.raises(UpstreamUnavailable):
                await world.service.infer(ask())
        for _ in range(3):
            with pytest.raises(CircuitOpen):
                await world.service.infer(ask())
        world.clock.advance(30.0)
        await world.service.infer(ask("probe"))
    lines = [r.getMessage() for r in caplog.records if "circuit breaker" in r.getMessage()]
    assert lines == [
        "openai circuit breaker closed -> open (last attempt: upstream_fault)",
        "openai circuit breaker half_open -> closed (last attempt: success)",
    ]


@pytest.mark.parametrize("last", [Role.ASSISTANT, Role.SYSTEM])
async def test_a_request_not_ending_with_the_user_bypasses_the_cache(last: Role) -> None:
    """The cache keys by the last user message: a prefill ("Sure") must not hit an answer to a
    user asking "Sure", nor be stored as one."""
    cache = DictCache()
    world = World(openai(), cache=cache)
    messages = (Message(Role.USER, "q"), Message(last, "Sure"))
    answer = await world.service.infer(InferenceRequest("gpt-4o-mini", messages))
    await world.service.drain()
    assert answer.cache.status is CacheStatus.BYPASS
    assert cache.entries == {}
    assert world.provider.calls[0].request.messages == messages
