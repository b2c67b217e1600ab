"""The OpenAI and Gemini embedders over real HTTP, against the upstream simulator on 127.0.0.1."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from adapters.outbound.embedders.gemini import GeminiEmbedder
from adapters.outbound.embedders.openai import OpenAIEmbedder
from adapters.outbound.providers import http_client
from domain.errors import KeyRejected, RateLimited, UpstreamFault, UpstreamRejected
from domain.key_pool import ApiKey
from simulator import SimulatorConfig, embed_text, running_simulator

pytestmark = pytest.mark.integration

OPENAI_KEY = ApiKey("sk-sim-embed-0123456789abcdefXYZW")
GEMINI_KEY = ApiKey("AIzaSy-sim-embed-0123456789abcdef")
TEXTS = ["What is the capital of France?", "100 USD to EUR", "bake sourdough bread", "hello"]


@dataclass
class Upstream:
    """The simulator, and embedders whose every request is recorded in `requests`."""

    base_url: str
    requests: list[httpx.Request] = field(default_factory=list)
    clients: list[httpx.AsyncClient] = field(default_factory=list)

    async def _record(self, request: httpx.Request) -> None:
        self.requests.append(request)

    def client(self) -> httpx.AsyncClient:
        shared = http_client(self.base_url)
        shared.event_hooks["request"].append(self._record)
        self.clients.append(shared)
        return shared

    def openai(self, **options: Any) -> OpenAIEmbedder:
        base = f"{self.base_url}/v1"
        return OpenAIEmbedder(self.client(), OPENAI_KEY, base_url=base, **options)

    def gemini(self, **options: Any) -> GeminiEmbedder:
        return GeminiEmbedder(self.client(), GEMINI_KEY, base_url=self.base_url, **options)

    def bodies(self) -> list[Any]:
        return [json.loads(r.content) for r in self.requests]

    def assert_key_kept_out(self, key: ApiKey, error: Exception | None = None) -> None:
        assert self.requests
        for request in self.requests:
            assert key.value not in str(request.url)
            assert "key=" not in str(request.url)
        if error is not None:
            assert key.value not in str(error)
            assert key.value[-12:] not in str(error)


@asynccontextmanager
async def upstream(config: SimulatorConfig | None = None) -> AsyncIterator[Upstream]:
    async with running_simulator(config or SimulatorConfig()) as sim:
        up = Upstream(sim.base_url)
        try:
            yield up
        finally:
            for shared in up.clients:
                await shared.aclose()


@asynccontextmanager
async def answering(payload: object) -> AsyncIterator[httpx.AsyncClient]:
    """A client whose every request gets `payload` (answers the simulator never gives)."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    transport = httpx.MockTransport(lambda _: httpx.Response(200, content=body))
    async with httpx.AsyncClient(transport=transport) as shared:
        yield shared


def norm(vector: Sequence[float]) -> float:
    return math.sqrt(math.fsum(x * x for x in vector))


# --- OpenAI ----------------------------------------------------------------------------------


async def test_openai_vectors_come_in_input_order_with_the_model_dimension() -> None:
    async with upstream() as up:
        embedder = up.openai()
        vectors = await embedder.embed(TEXTS)
    assert embedder.identity == "openai:text-embedding-3-small:1536"
    assert embedder.dimension == 1536
    assert up.bodies() == [{"model": "text-embedding-3-small", "input": TEXTS}]
    request = up.requests[0]
    assert request.url.path == "/v1/embeddings"
    assert request.headers["authorization"] == f"Bearer {OPENAI_KEY.value}"
    for text, vector in zip(TEXTS, vectors, strict=True):
        expected = embed_text(text, model="text-embedding-3-small", dim=1536)
        assert vector == pytest.approx(expected, abs=1e-6)
        assert norm(vector) == pytest.approx(1.0)
    up.assert_key_kept_out(OPENAI_KEY)


async def test_openai_dimensions_are_requested_and_named_in_the_identity() -> None:
    async with upstream() as up:
        embedder = up.openai(model="text-embedding-3-large", dimensions=256)
        [vector] = await embedder.embed(["shorter vectors"])
    assert embedder.identity == "openai:text-embedding-3-large:256"
    assert len(vector) == 256
    assert up.bodies()[0]["dimensions"] == 256


async def test_openai_the_same_texts_give_the_same_vectors() -> None:
    async with upstream() as up:
        embedder = up.openai()
        assert await embedder.embed(TEXTS) == await embedder.embed(TEXTS)


async def test_openai_long_lists_are_sent_in_several_requests_and_stay_in_order() -> None:
    async with upstream() as up:
        embedder = up.openai(max_inputs=3)
        alone = [(await embedder.embed([text]))[0] for text in TEXTS * 2]
        up.requests.clear()
        together = await embedder.embed(TEXTS * 2)
    assert [len(b["input"]) for b in up.bodies()] == [3, 3, 2]
    assert together == alone


async def test_openai_a_500_is_an_upstream_fault() -> None:
    async with upstream(SimulatorConfig(faults="500@embed")) as up:
        with pytest.raises(UpstreamFault, match="openai embeddings failed: HTTP 500") as caught:
            await up.openai().embed(TEXTS)
    up.assert_key_kept_out(OPENAI_KEY, caught.value)


@pytest.mark.parametrize(
    "config",
    [
        SimulatorConfig(invalid_keys=frozenset({OPENAI_KEY.value})),
        SimulatorConfig(faults="badkey@embed"),
    ],
    ids=["401", "badkey-echoes-a-masked-key"],
)
async def test_openai_a_rejected_key_is_classified_and_never_shown(config: SimulatorConfig) -> None:
    async with upstream(config) as up:
        with pytest.raises(KeyRejected, match=OPENAI_KEY.fingerprint) as caught:
            await up.openai().embed(TEXTS)
    up.assert_key_kept_out(OPENAI_KEY, caught.value)


async def test_openai_a_429_is_rate_limited_with_its_retry_delay() -> None:
    async with upstream(SimulatorConfig(faults="429:7@embed")) as up:
        with pytest.raises(RateLimited) as caught:
            await up.openai().embed(TEXTS)
    assert caught.value.retry_after == pytest.approx(7.0)


async def test_openai_a_cut_answer_is_an_upstream_fault() -> None:
    async with upstream(SimulatorConfig(faults="malformed@embed")) as up:
        with pytest.raises(UpstreamFault, match="malformed"):
            await up.openai().embed(TEXTS)


async def test_openai_an_unreachable_server_is_an_upstream_fault() -> None:
    async with upstream() as up:
        embedder = up.openai()
        await embedder.embed(TEXTS)
        async with upstream() as gone:
            gone_url = f"{gone.base_url}/v1"
        # The same shared client, another (closed) port.
        embedder = OpenAIEmbedder(up.clients[0], OPENAI_KEY, base_url=gone_url)
        with pytest.raises(UpstreamFault, match="connection failed") as caught:
            await embedder.embed(TEXTS)
        up.assert_key_kept_out(OPENAI_KEY, caught.value)


async def test_openai_vectors_are_put_back_in_order_by_their_index() -> None:
    def one_hot(i: int) -> list[float]:
        return [1.0 if j == i else 0.0 for j in range(3)]

    shuffled = {"data": [{"index": i, "embedding": one_hot(i)} for i in (2, 0, 1)]}
    async with answering(shuffled) as shared:
        embedder = OpenAIEmbedder(shared, OPENAI_KEY, model="m", dimensions=3)
        assert await embedder.embed(["a", "b", "c"]) == [one_hot(0), one_hot(1), one_hot(2)]


@pytest.mark.parametrize(
    "payload",
    [
        {"data": [{"index": 0, "embedding": [1.0, 0.0]}]},  # one vector for two texts
        {"data": [{"index": 0, "embedding": [1.0, 0.0]}, {"index": 0, "embedding": [0.0, 1.0]}]},
        {"data": [{"index": 0, "embedding": [1.0]}, {"index": 1, "embedding": [0.0, 1.0]}]},
        {"data": [{"index": 0, "embedding": [1.0, "x"]}, {"index": 1, "embedding": [0, 1]}]},
        {"data": [{"index": 0, "embedding": "AAAA"}, {"index": 1, "embedding": [0, 1]}]},
        {"object": "list"},
        ["not", "an", "object"],
        b"not json",
    ],
    ids=[
        "too-few",
        "duplicate-index",
        "wrong-dimension",
        "not-numbers",
        "base64",
        "no-data",
        "list",
        "not-json",
    ],
)
async def test_openai_answers_that_do_not_fit_are_upstream_faults(payload: object) -> None:
    async with answering(payload) as shared:
        embedder = OpenAIEmbedder(shared, OPENAI_KEY, model="m", dimensions=2)
        with pytest.raises(UpstreamFault, match="malformed"):
            await embedder.embed(["a", "b"])


async def test_a_model_of_unknown_dimension_needs_dimensions() -> None:
    async with httpx.AsyncClient() as shared:
        with pytest.raises(ValueError, match="pass dimensions"):
            OpenAIEmbedder(shared, OPENAI_KEY, model="nomic-embed-text")
        with pytest.raises(ValueError, match="pass dimensions"):
            GeminiEmbedder(shared, GEMINI_KEY, model="embedding-001")
        with pytest.raises(ValueError, match="positive integer"):
            OpenAIEmbedder(shared, OPENAI_KEY, dimensions=0)


async def test_api_windows_are_their_documented_limits_counted_conservatively() -> None:
    async with httpx.AsyncClient() as shared:
        openai, gemini = OpenAIEmbedder(shared, OPENAI_KEY), GeminiEmbedder(shared, GEMINI_KEY)
        assert (openai.input_window, gemini.input_window) == (8191, 2048)
        for embedder in (openai, gemini):
            assert embedder.fits("How do I reset my password?")
            # no tokenizer makes more tokens than UTF-8 bytes: within them, it surely fits
            assert embedder.fits("x" * (embedder.input_window - 1))
            assert not embedder.fits("x" * embedder.input_window)
            assert not embedder.fits("é" * (embedder.input_window // 2 + 1))


async def test_reprs_hold_no_key() -> None:
    async with httpx.AsyncClient() as shared:
        embedders = (OpenAIEmbedder(shared, OPENAI_KEY), GeminiEmbedder(shared, GEMINI_KEY))
        for embedder in embedders:
            assert OPENAI_KEY.value not in repr(embedder)
            assert GEMINI_KEY.value not in repr(embedder)
            assert embedder.identity in repr(embedder)


# --- Gemini ----------------------------------------------------------------------------------


async def test_gemini_vectors_come_in_input_order_with_the_requested_dimension() -> None:
    async with upstream() as up:
        embedder = up.gemini(dimensions=768)
        vectors = await embedder.embed(TEXTS)
    assert embedder.identity == "gemini:gemini-embedding-001:768"
    request = up.requests[0]
    assert request.url.path == "/v1beta/models/gemini-embedding-001:batchEmbedContents"
    assert request.headers["x-goog-api-key"] == GEMINI_KEY.value
    assert up.bodies()[0] == {
        "requests": [
            {
                "model": "models/gemini-embedding-001",
                "content": {"parts": [{"text": text}]},
                "taskType": "SEMANTIC_SIMILARITY",
                "outputDimensionality": 768,
            }
            for text in TEXTS
        ]
    }
    for text, vector in zip(TEXTS, vectors, strict=True):
        expected = embed_text(text, model="gemini-embedding-001", dim=768)
        assert vector == pytest.approx(expected, abs=1e-6)
    up.assert_key_kept_out(GEMINI_KEY)


async def test_gemini_defaults_to_the_full_size_of_gemini_embedding_001() -> None:
    async with upstream(SimulatorConfig(gemini_embedding_dim=3072)) as up:
        embedder = up.gemini()
        [vector] = await embedder.embed(["full size"])
    assert (embedder.identity, embedder.dimension, len(vector)) == (
        "gemini:gemini-embedding-001:3072",
        3072,
        3072,
    )
    assert "outputDimensionality" not in up.bodies()[0]["requests"][0]


async def test_gemini_the_same_texts_give_the_same_vectors_and_batches_keep_order() -> None:
    async with upstream() as up:
        embedder = up.gemini(model="models/text-embedding-004", max_requests=3)
        first = await embedder.embed(TEXTS * 2)
        second = await embedder.embed(TEXTS * 2)
    assert embedder.identity == "gemini:text-embedding-004:768"
    assert first == second
    assert first[: len(TEXTS)] == first[len(TEXTS) :]
    assert len(up.requests) == 6


async def test_gemini_a_500_is_an_upstream_fault() -> None:
    async with upstream(SimulatorConfig(faults="500@embed")) as up:
        with pytest.raises(UpstreamFault, match="gemini embeddings failed: HTTP 500") as caught:
            await up.gemini(dimensions=768).embed(TEXTS)
    up.assert_key_kept_out(GEMINI_KEY, caught.value)


@pytest.mark.parametrize("status", [401, 400, 403])
async def test_gemini_a_rejected_key_is_classified_and_never_shown(status: int) -> None:
    config = SimulatorConfig(
        invalid_keys=frozenset({GEMINI_KEY.value}), gemini_invalid_key_status=status
    )
    async with upstream(config) as up:
        with pytest.raises(KeyRejected, match=GEMINI_KEY.fingerprint) as caught:
            await up.gemini(dimensions=768).embed(TEXTS)
    up.assert_key_kept_out(GEMINI_KEY, caught.value)


async def test_gemini_a_429_carries_its_retry_delay() -> None:
    async with upstream(SimulatorConfig(faults="429:37@embed")) as up:
        with pytest.raises(RateLimited) as caught:
            await up.gemini(dimensions=768).embed(TEXTS)
    assert caught.value.retry_after == pytest.approx(37.0)


async def test_gemini_an_unknown_model_is_refused() -> None:
    config = SimulatorConfig(models=frozenset({"gemini-embedding-001"}))
    async with upstream(config) as up:
        with pytest.raises(UpstreamRejected, match="404"):
            await up.gemini(model="no-such-embedder", dimensions=8).embed(TEXTS)


@pytest.mark.parametrize(
    "payload",
    [
        {"embeddings": [{"values": [1.0, 0.0]}]},
        b'{"embeddings": [{"values": [1.0, 0.0]}, {"values": [NaN, 1.0]}]}',
        b'{"embeddings": [{"values": [1.0, 0.0]}, {"values": [1e999, 1.0]}]}',
        {"embeddings": [{"values": [1.0, 0.0]}, {"value": [0.0, 1.0]}]},
        {"embedding": {"values": [1.0, 0.0]}},
    ],
    ids=["too-few", "nan", "infinity", "no-values", "single-shape"],
)
async def test_gemini_answers_that_do_not_fit_are_upstream_faults(payload: object) -> None:
    async with answering(payload) as shared:
        embedder = GeminiEmbedder(shared, GEMINI_KEY, model="m", dimensions=2)
        with pytest.raises(UpstreamFault, match="malformed"):
            await embedder.embed(["a", "b"])


async def test_gemini_vectors_are_normalised() -> None:
    payload = {"embeddings": [{"values": [3.0, 4.0]}, {"values": [0.0, 0.5]}]}
    async with answering(payload) as shared:
        embedder = GeminiEmbedder(shared, GEMINI_KEY, model="m", dimensions=2)
        assert await embedder.embed(["a", "b"]) == [[0.6, 0.8], [0.0, 1.0]]


async def test_no_texts_no_request() -> None:
    async with upstream() as up:
        assert await up.openai().embed([]) == []
        assert await up.gemini().embed([]) == []
    assert up.requests == []
