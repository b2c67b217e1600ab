"""EmbeddingService: routing, keys, retries and the deadline, as for chat; never a fallback."""

from __future__ import annotations

import pytest

from application.embeddings import EmbeddingService
from application.resilience import Upstream
from domain.backoff import BackoffPolicy
from domain.circuit_breaker import CircuitBreaker
from domain.errors import (
    DeadlineExceeded,
    RateLimited,
    UnknownModel,
    UpstreamFault,
    UpstreamRejected,
    UpstreamUnavailable,
)
from domain.key_pool import ApiKey, KeyPool
from domain.model import EmbeddingRequest, Usage
from domain.routing import ModelRouter, Route
from tests.fakes import (
    Fail,
    FakeClock,
    FakeProvider,
    FakeSleeper,
    FixedRandom,
    Hang,
    RecordingMetrics,
    RecordingTracer,
)


def service(*providers: FakeProvider, **routes: Route) -> EmbeddingService:
    return world(RecordingMetrics(), *providers, **routes)


def world(metrics: RecordingMetrics, *providers: FakeProvider, **routes: Route) -> EmbeddingService:
    clock = FakeClock()
    upstreams = {
        p.name: Upstream(
            p,
            KeyPool(p.name, [ApiKey(f"sk-{p.name}-{i}") for i in range(2)], 60),
            CircuitBreaker(p.name, 5, 30),
        )
        for p in providers
    }
    fallbacks = {"text-embedding-3-small": ("gemini-embedding-001",)}
    return EmbeddingService(
        ModelRouter(upstreams, routes, fallbacks=fallbacks),
        upstreams, BackoffPolicy(2, 1.0, 8.0), 30.0, clock, FakeSleeper(clock),
        FixedRandom(0.5), metrics, RecordingTracer(),
    )  # fmt: skip


def ask(model: str = "text-embedding-3-small", *texts: str) -> EmbeddingRequest:
    return EmbeddingRequest(model, texts or ("hello",))


async def test_the_routed_provider_embeds_under_the_upstream_name() -> None:
    openai = FakeProvider("openai")
    embedded = await service(openai, small=Route("openai", "text-embedding-3-small")).embed(
        ask("small", "a", "bcd")
    )
    assert embedded.vectors == ((1.0, 2.0, 3.0), (3.0, 4.0, 5.0))
    assert openai.embedded[0][1].model == "text-embedding-3-small"


async def test_a_rate_limited_key_is_switched_and_a_fault_retried() -> None:
    openai = FakeProvider("openai", Fail(RateLimited("limited", 30)), Fail(UpstreamFault("503")))
    metrics = RecordingMetrics()
    await world(metrics, openai).embed(ask())
    keys = [fingerprint for fingerprint, _ in openai.embedded]
    assert len(keys) == 3
    assert keys[0] != keys[1]
    assert [o for _, o in metrics.attempts] == ["rate_limited", "upstream_fault", "success"]
    assert metrics.token_counts[-1][2] == Usage(5, 0)


async def test_a_provider_that_stays_down_is_unavailable_and_never_falls_back() -> None:
    """Another embedding model's vectors live in another space: a fallback would corrupt an
    index silently."""
    openai, gemini = (
        FakeProvider("openai", *[Fail(UpstreamFault("503"))] * 3),
        FakeProvider("gemini"),
    )
    with pytest.raises(UpstreamUnavailable):
        await service(openai, gemini).embed(ask())
    assert gemini.embedded == []


async def test_a_client_error_is_not_retried() -> None:
    openai = FakeProvider("openai", Fail(UpstreamRejected("bad input")))
    with pytest.raises(UpstreamRejected):
        await service(openai).embed(ask())
    assert len(openai.embedded) == 1


async def test_the_deadline_bounds_a_silent_provider() -> None:
    openai = FakeProvider("openai", Hang())
    with pytest.raises(DeadlineExceeded):
        await service(openai).embed(ask(), time_left=0.05)
    assert openai.cancelled == 1


async def test_an_unknown_model_is_not_found() -> None:
    with pytest.raises(UnknownModel):
        await service(FakeProvider("openai")).embed(ask("nomic-embed-text"))
