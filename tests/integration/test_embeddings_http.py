"""POST /v1/embeddings through the official `openai` SDK: the real proxy in front of the
simulator, routed by model to OpenAI or Gemini, with the same keys, retries, limits and metrics
as chat completions."""

from __future__ import annotations

import base64
import struct
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
from openai.types import CreateEmbeddingResponse

from tests.harness import Stack, scrape, stack
from tests.integration.test_openai_conformance import strict

pytestmark = pytest.mark.integration

MODELS = {"text-embedding-3-small": "openai", "text-embedding-004": "gemini"}


def client(s: Stack) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=s.proxy.http_url, api_key="unused", max_retries=0)


@pytest.fixture
async def s() -> AsyncIterator[Stack]:
    async with stack(http=True) as running:
        yield running


async def post(s: Stack, body: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as http:
        return await http.post(f"{s.proxy.http_url}/embeddings", json=body)


@pytest.mark.parametrize(("model", "provider"), MODELS.items())
async def test_the_sdk_embeds_a_list_with_each_provider(
    s: Stack, model: str, provider: str
) -> None:
    texts = ["how do I reset my password", "opening hours on sunday"]
    raw = await client(s).embeddings.with_raw_response.create(model=model, input=texts)
    result = raw.parse()  # the SDK asked for base64 and decoded it
    assert raw.headers["x-llm-proxy-provider"] == provider
    assert [d.index for d in result.data] == [0, 1]
    first, second = (d.embedding for d in result.data)
    assert len(first) == len(second) > 8
    assert first != second
    assert (
        s.sim.stats.by_endpoint[
            f"{provider}.{'embeddings' if provider == 'openai' else 'batch_embed'}"
        ]
        == 1
    )


@pytest.mark.parametrize("model", MODELS)
async def test_float_and_base64_carry_the_same_vector_and_dimensions_shorten_it(
    s: Stack, model: str
) -> None:
    text = "the same text"
    floats = await post(s, {"model": model, "input": text, "encoding_format": "float"})
    packed = await post(s, {"model": model, "input": text, "encoding_format": "base64"})
    short = await post(s, {"model": model, "input": text, "dimensions": 64})
    for response in (floats, packed, short):
        assert response.status_code == 200, response.text
    vector = floats.json()["data"][0]["embedding"]
    raw = base64.b64decode(packed.json()["data"][0]["embedding"])
    decoded = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert decoded == pytest.approx(vector, rel=1e-6)
    as_sdk_decodes = packed.json()
    as_sdk_decodes["data"][0]["embedding"] = list(decoded)  # the SDK's type is after decoding
    for body in (floats.json(), as_sdk_decodes, short.json()):
        strict(CreateEmbeddingResponse, body)
    assert len(short.json()["data"][0]["embedding"]) == 64


async def test_a_failing_upstream_is_retried_and_counted(s: Stack) -> None:
    result = await client(s).embeddings.create(
        model="text-embedding-3-small", input="flaky [[sim:503*1]]"
    )
    assert result.data[0].embedding
    samples = await scrape(s)
    assert (
        samples[
            ("upstream_attempts_total", (("outcome", "upstream_fault"), ("provider", "openai")))
        ]
        == 1
    )
    assert (
        samples[("upstream_attempts_total", (("outcome", "success"), ("provider", "openai")))] == 1
    )
    assert samples[("http_requests_total", (("code", "200"), ("route", "/v1/embeddings")))] == 1


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "text-embedding-3-small", "input": []}, 400, "input"),
        ({"model": "text-embedding-3-small", "input": [""]}, 400, "input"),
        ({"model": "text-embedding-3-small", "input": [[1, 2, 3]]}, 400, "input"),
        ({"model": "text-embedding-3-small", "input": "x", "dimensions": 0}, 400, "dimensions"),
        (
            {"model": "text-embedding-3-small", "input": "x", "encoding_format": "hex"},
            400,
            "encoding_format",
        ),
        ({"model": "nomic-embed", "input": "x"}, 404, "model"),
        ({"input": "x"}, 400, "model"),
    ],
)
async def test_bad_requests_name_the_parameter(
    s: Stack, body: dict[str, Any], status: int, param: str
) -> None:
    response = await post(s, body)
    assert response.status_code == status
    assert response.json()["error"]["param"] == param
    assert s.sim.stats.requests_total == 0


async def test_embeddings_go_through_the_tenants_rate_limit() -> None:
    async with stack(http=True, tenant_rate_limit=0.5) as s:
        await client(s).embeddings.create(model="text-embedding-3-small", input="one")
        with pytest.raises(openai.RateLimitError):
            await client(s).embeddings.create(model="text-embedding-3-small", input="two")
