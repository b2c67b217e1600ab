"""MODEL_FALLBACKS in the use case: when the requested model's provider cannot answer, the next
model of its chain does, within the same deadline and (streams) before any chunk was sent."""

from __future__ import annotations

import asyncio

import pytest

from application.inference import InferenceService
from application.resilience import Upstream
from domain.backoff import BackoffPolicy
from domain.circuit_breaker import CircuitBreaker, Verdict
from domain.errors import (
    CircuitOpen,
    ConnectionsExhausted,
    DeadlineExceeded,
    KeyRejected,
    NoTimeToRetry,
    NoUsableKey,
    RateLimited,
    UnknownModel,
    UpstreamFault,
    UpstreamRejected,
    UpstreamUnavailable,
)
from domain.key_pool import ApiKey, KeyPool
from domain.model import Answer, CacheStatus, Delta, InferenceRequest, Message, Role
from domain.routing import ModelRouter
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

CHAIN = {"gpt-4o": ("gemini-1.5-flash",)}


class World:
    """OpenAI and Gemini fakes behind the service, with MODEL_FALLBACKS `fallbacks`."""

    def __init__(
        self,
        openai: FakeProvider,
        gemini: FakeProvider,
        fallbacks: dict[str, tuple[str, ...]] | None = None,
        max_retries: int = 1,
        request_timeout: float = 30.0,
        upstream_timeout: float | None = None,
        cache: DictCache | None = None,
        keyless: tuple[str, ...] = (),
    ) -> None:
        self.clock = FakeClock()
        self.sleeper = FakeSleeper(self.clock)
        self.metrics = RecordingMetrics()
        self.tracer = RecordingTracer()
        self.openai, self.gemini, self.cache = openai, gemini, cache
        self.upstreams = {
            p.name: Upstream(
                p,
                KeyPool(p.name, [ApiKey(f"sk-{p.name}-{i}") for i in range(2)], 60.0),
                CircuitBreaker(p.name, 3, cooldown=30.0),
            )
            for p in (openai, gemini)
            if p.name not in keyless
        }
        self.service = InferenceService(
            router=ModelRouter(self.upstreams, fallbacks=CHAIN if fallbacks is None else fallbacks),
            upstreams=self.upstreams,
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


def ask(prompt: str = "hi", model: str = "gpt-4o", **kw: object) -> InferenceRequest:
    return InferenceRequest(model, (Message(Role.USER, prompt),), **kw)  # type: ignore[arg-type]


def openai(*script: object) -> FakeProvider:
    return FakeProvider("openai", *script)  # type: ignore[arg-type]


def gemini(*script: object) -> FakeProvider:
    return FakeProvider("gemini", *script)  # type: ignore[arg-type]


def fell_back_to_gemini(world: World, answer: Answer) -> None:
    assert answer.completion.provider == "gemini"
    assert answer.completion.model == "gemini-1.5-flash"
    assert answer.fallback_from == "gpt-4o"
    assert world.metrics.fallbacks == [("gpt-4o", "gemini-1.5-flash")]
    (call,) = world.gemini.calls
    assert call.request.model == "gemini-1.5-flash"


# -- what makes a request fall back -------------------------------------------------------------


async def test_retries_used_up_fall_back_to_the_next_model() -> None:
    world = World(openai(*[Fail(UpstreamFault("503"))] * 2), gemini(Reply("from gemini")))
    answer = await world.service.infer(ask())
    fell_back_to_gemini(world, answer)
    assert answer.completion.content == "from gemini"
    assert len(world.openai.calls) == 2  # MAX_RETRIES=1: the primary had its retry first
    (span,) = world.tracer.named("inference")
    assert ("fallback", {"from": "gpt-4o", "to": "gemini-1.5-flash",
                         "reason": "UpstreamUnavailable"}) in span.events  # fmt: skip
    assert span.attributes["llm_proxy.fallback.from"] == "gpt-4o"
    assert span.attributes["llm_proxy.fallback.to"] == "gemini-1.5-flash"


async def test_an_open_breaker_falls_back_without_calling_the_primary() -> None:
    world = World(openai(), gemini())
    breaker = world.upstreams["openai"].breaker
    for _ in range(3):
        breaker.record(breaker.admit(world.clock.now()), Verdict.FAILURE, world.clock.now())
    answer = await world.service.infer(ask())
    fell_back_to_gemini(world, answer)
    assert world.openai.calls == []
    assert world.tracer.named("inference")[0].events[-1][1]["reason"] == CircuitOpen.__name__


async def test_every_key_rate_limited_falls_back() -> None:
    limited = Fail(RateLimited("429", retry_after=600.0))
    world = World(openai(limited, limited), gemini())
    fell_back_to_gemini(world, await world.service.infer(ask()))
    assert world.tracer.named("inference")[0].events[-1][1]["reason"] == NoUsableKey.__name__


async def test_every_key_rejected_falls_back() -> None:
    world = World(openai(Fail(KeyRejected("401")), Fail(KeyRejected("403"))), gemini())
    fell_back_to_gemini(world, await world.service.infer(ask()))
    assert world.upstreams["openai"].keys.disabled() == 2


async def test_a_silent_provider_past_upstream_timeout_falls_back() -> None:
    world = World(openai(Hang(), Hang()), gemini(), upstream_timeout=0.02)
    fell_back_to_gemini(world, await world.service.infer(ask()))
    assert world.openai.cancelled == 2


async def test_a_retry_after_beyond_the_deadline_falls_back_at_once() -> None:
    world = World(openai(Fail(UpstreamFault("503", retry_after=120.0))), gemini(), max_retries=3)
    fell_back_to_gemini(world, await world.service.infer(ask()))
    assert len(world.openai.calls) == 1
    assert world.sleeper.sleeps == []


# -- what does not -----------------------------------------------------------------------------


async def test_a_client_error_does_not_fall_back() -> None:
    world = World(openai(Fail(UpstreamRejected("context too long"))), gemini())
    with pytest.raises(UpstreamRejected):
        await world.service.infer(ask())
    assert world.gemini.calls == []
    assert world.metrics.fallbacks == []


async def test_the_client_deadline_does_not_fall_back() -> None:
    world = World(openai(Hang()), gemini())
    with pytest.raises(DeadlineExceeded):
        await world.service.infer(ask(), time_left=0.05)
    assert world.gemini.calls == []
    assert world.metrics.fallbacks == []


async def test_a_cancelled_client_does_not_fall_back() -> None:
    world = World(openai(Hang()), gemini())
    task = asyncio.create_task(world.service.infer(ask()))
    await world.openai.entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert world.gemini.calls == []


async def test_the_proxys_own_full_pool_does_not_fall_back() -> None:
    world = World(openai(Fail(ConnectionsExhausted("pool full", 1.0))), gemini())
    with pytest.raises(ConnectionsExhausted):
        await world.service.infer(ask())
    assert world.gemini.calls == []


async def test_a_model_without_a_chain_fails_as_before() -> None:
    world = World(openai(*[Fail(UpstreamFault("503"))] * 2), gemini())
    with pytest.raises(UpstreamUnavailable):
        await world.service.infer(ask(model="gpt-4o-mini"))
    assert world.gemini.calls == []


# -- the chain, the deadline, the last error ----------------------------------------------------


async def test_the_chain_is_walked_in_order_and_each_step_counted() -> None:
    chain = {"gpt-4o": ("gemini-1.5-pro", "gpt-4o-mini")}
    world = World(
        openai(*[Fail(UpstreamFault("503"))] * 2, Reply("mini")),
        gemini(*[Fail(UpstreamFault("500"))] * 2),
        fallbacks=chain,
    )
    answer = await world.service.infer(ask())
    assert (answer.completion.model, answer.completion.provider) == ("gpt-4o-mini", "openai")
    assert answer.fallback_from == "gpt-4o"
    assert world.metrics.fallbacks == [
        ("gpt-4o", "gemini-1.5-pro"),
        ("gemini-1.5-pro", "gpt-4o-mini"),
    ]


async def test_when_every_model_fails_the_last_error_ends_the_request() -> None:
    world = World(openai(*[Fail(UpstreamFault("503"))] * 2), gemini(Fail(KeyRejected("bad"))))
    world.gemini.then(Fail(KeyRejected("bad")))
    with pytest.raises(NoUsableKey, match="gemini"):
        await world.service.infer(ask())


async def test_the_fallback_runs_within_the_same_deadline() -> None:
    # 1s in all: the primary's retry waits 0.5s, then its next wait (1s) no longer fits; the
    # fallback's own retry-after of 0.6s does not fit the 0.5s left (it would in a fresh 1s).
    world = World(
        openai(*[Fail(UpstreamFault("503"))] * 2),
        gemini(Fail(UpstreamFault("500", retry_after=0.6)), Reply("too late")),
        max_retries=3,
        request_timeout=1.0,
    )
    with pytest.raises(NoTimeToRetry, match="gemini"):
        await world.service.infer(ask())
    assert world.metrics.fallbacks == [("gpt-4o", "gemini-1.5-flash")]
    assert len(world.gemini.calls) == 1


async def test_a_model_with_fallbacks_keeps_one_upstream_timeout_of_the_deadline_for_them() -> None:
    # 1s in all, UPSTREAM_TIMEOUT 0.6s: the retry after 0.5s would leave the fallback 0.5s, less
    # than one attempt may take; so the fallback comes at once. gpt-4o-mini has no chain: it
    # retries as long as the deadline allows.
    world = World(
        openai(Fail(UpstreamFault("503")), Fail(UpstreamFault("503")), Reply("mini")),
        gemini(Reply("g")),
        max_retries=3,
        request_timeout=1.0,
        upstream_timeout=0.6,
    )
    fell_back_to_gemini(world, await world.service.infer(ask()))
    assert len(world.openai.calls) == 1
    assert (await world.service.infer(ask(model="gpt-4o-mini"))).completion.content == "mini"
    assert len(world.openai.calls) == 3


async def test_a_primary_without_keys_goes_straight_to_its_fallback() -> None:
    world = World(openai(), gemini(), keyless=("openai",))
    answer = await world.service.infer(ask())
    fell_back_to_gemini(world, answer)
    assert world.tracer.named("inference")[0].events[-1][1]["reason"] == "no_keys"
    with pytest.raises(UnknownModel, match="no API keys"):
        await world.service.infer(ask(model="gpt-4o-mini"))  # no chain: as before


async def test_coalesced_requests_share_one_walk_down_the_chain() -> None:
    world = World(openai(*[Fail(UpstreamFault("503"))] * 2), gemini(Reply("shared")))
    world.gemini.gate = asyncio.Event()
    first = asyncio.create_task(world.service.infer(ask("same")))
    second = asyncio.create_task(world.service.infer(ask("same")))
    await world.gemini.entered.wait()
    world.gemini.gate.set()
    a, b = await asyncio.gather(first, second)
    assert a.completion.content == b.completion.content == "shared"
    assert a.fallback_from == b.fallback_from == "gpt-4o"
    assert len(world.gemini.calls) == 1
    assert world.metrics.fallbacks == [("gpt-4o", "gemini-1.5-flash")]


# -- streams -------------------------------------------------------------------------------------


async def test_a_stream_falls_back_before_its_first_chunk() -> None:
    world = World(
        openai(*[Fail(UpstreamFault("503"))] * 2), gemini(Reply("a b", chunks=("a ", "b")))
    )
    deltas, answer = await world.stream(ask())
    assert deltas == ["a ", "b"]
    fell_back_to_gemini(world, answer)
    assert world.gemini.calls[0].streamed


async def test_a_stream_that_failed_after_a_chunk_does_not_fall_back() -> None:
    broken = Reply("a b", chunks=("a", "b"), fail_after_chunks=UpstreamFault("reset"))
    world = World(openai(broken), gemini())
    received: list[str] = []

    async def consume() -> None:
        async for event in world.service.stream(ask()):
            assert isinstance(event, Delta)
            received.append(event.content)

    with pytest.raises(UpstreamFault, match="reset"):
        await consume()
    assert received == ["a", "b"]
    assert world.gemini.calls == []
    assert world.metrics.fallbacks == []


async def test_a_stream_does_not_fall_back_on_a_client_error() -> None:
    world = World(openai(Fail(UpstreamRejected("bad request"))), gemini())
    with pytest.raises(UpstreamRejected):
        await world.stream(ask())
    assert world.gemini.calls == []


async def test_a_stream_does_not_fall_back_at_the_client_deadline() -> None:
    world = World(openai(Hang()), gemini())
    with pytest.raises(DeadlineExceeded):
        async for _ in world.service.stream(ask(), time_left=0.05):
            pass
    assert world.gemini.calls == []


# -- the cache: a fallback answer belongs to the model that answered ----------------------------


async def test_a_fallback_answer_is_cached_under_the_model_that_answered() -> None:
    cache = DictCache()
    world = World(openai(*[Fail(UpstreamFault("503"))] * 4), gemini(Reply("g")), cache=cache)
    await world.service.infer(ask("q"))
    await world.service.drain()
    assert [(p, r.model) for p, r in cache.entries] == [("gemini", "gemini-1.5-flash")]
    # asked for the fallback model itself: a hit in its scope, no fallback
    direct = await world.service.infer(ask("q", model="gemini-1.5-flash"))
    assert direct.cache.status is CacheStatus.EXACT
    assert direct.fallback_from is None
    # asked for gpt-4o again while OpenAI still fails: its scope misses, gemini's hits
    again = await world.service.infer(ask("q"))
    assert again.cache.status is CacheStatus.EXACT
    assert again.fallback_from == "gpt-4o"
    assert again.completion.provider == "gemini"
    assert len(world.gemini.calls) == 1
    miss, exact = CacheStatus.MISS, CacheStatus.EXACT
    assert world.metrics.lookups == [miss, miss, exact, miss, exact]


async def test_a_healthy_primary_never_serves_a_fallback_answer_from_the_cache() -> None:
    cache = DictCache()
    world = World(openai(*[Fail(UpstreamFault("503"))] * 2, Reply("o")), gemini(), cache=cache)
    await world.service.infer(ask("q"))
    await world.service.drain()
    answer = await world.service.infer(ask("q"))
    assert (answer.completion.provider, answer.completion.content) == ("openai", "o")
    assert answer.fallback_from is None


async def test_a_stream_replays_a_cached_fallback_answer() -> None:
    cache = DictCache()
    world = World(openai(*[Fail(UpstreamFault("503"))] * 4), gemini(Reply("g")), cache=cache)
    await world.stream(ask("q"))
    await world.service.drain()
    deltas, answer = await world.stream(ask("q"))
    assert deltas == ["g"]
    assert answer.cache.status is CacheStatus.EXACT
    assert answer.fallback_from == "gpt-4o"
    assert len(world.gemini.calls) == 1
