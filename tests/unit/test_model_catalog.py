"""ModelCatalog: configured names, then each provider's own list, kept a while."""

from __future__ import annotations

from application.models import ListedModel, ModelCatalog
from application.ports import ModelInfo
from application.resilience import Upstream
from domain.circuit_breaker import CircuitBreaker
from domain.errors import UpstreamFault
from domain.key_pool import ApiKey, KeyPool
from domain.routing import ModelRouter, Route
from tests.fakes import FakeClock, FakeProvider


def catalog(
    openai: FakeProvider, gemini: FakeProvider, clock: FakeClock, **routes: Route
) -> ModelCatalog:
    upstreams = {
        p.name: Upstream(
            p, KeyPool(p.name, [ApiKey(f"key-{p.name}-1")], 30), CircuitBreaker(p.name, 5, 30)
        )
        for p in (openai, gemini)
    }
    router = ModelRouter(upstreams, routes=routes)
    return ModelCatalog(router, upstreams, clock, ttl=600, retry=30)


async def test_configured_names_then_each_providers_routable_models() -> None:
    openai, gemini, clock = FakeProvider("openai"), FakeProvider("gemini"), FakeClock()
    openai.listed = [ModelInfo("gpt-4o", 1700), ModelInfo("dall-e-3", 1600)]
    gemini.listed = [ModelInfo("gemini-2.0-flash")]
    models = await catalog(openai, gemini, clock, fast=Route("gemini", "gemini-2.0-flash")).models()
    assert models == [
        ListedModel("fast", "gemini"),
        ListedModel("gemini-2.0-flash", "gemini"),
        ListedModel("gpt-4o", "openai", 1700),  # dall-e-3 routes nowhere here: not listed
    ]


async def test_a_list_is_kept_for_its_ttl_and_a_failed_one_is_asked_again_sooner() -> None:
    openai, gemini, clock = FakeProvider("openai"), FakeProvider("gemini"), FakeClock()
    openai.listed = [ModelInfo("gpt-4o")]
    gemini.listed = UpstreamFault("gemini failed: HTTP 503")
    models = catalog(openai, gemini, clock)
    assert [m.id for m in await models.models()] == ["gpt-4o"]
    clock.t += 31
    gemini.listed = [ModelInfo("gemini-2.0-flash")]
    assert [m.id for m in await models.models()] == ["gemini-2.0-flash", "gpt-4o"]
    assert (openai.listings, gemini.listings) == (1, 2)
    clock.t += 600
    await models.models()
    assert (openai.listings, gemini.listings) == (2, 3)


async def test_find_trusts_a_providers_list_and_its_prefixes_only_when_it_has_none() -> None:
    openai, gemini, clock = FakeProvider("openai"), FakeProvider("gemini"), FakeClock()
    openai.listed = [ModelInfo("gpt-4o")]
    gemini.listed = UpstreamFault("gemini failed")
    models = catalog(openai, gemini, clock)
    assert await models.find("gpt-4o") == ListedModel("gpt-4o", "openai")
    assert await models.find("gpt-4-typo") is None  # OpenAI listed its models: not among them
    assert await models.find("gemini-9-pro") == ListedModel("gemini-9-pro", "gemini")
    assert await models.find("llama-3") is None
    assert await models.find("gpt-*") is None
