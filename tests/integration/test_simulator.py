"""The upstream simulator over real HTTP on 127.0.0.1 (httpx client, aiohttp server)."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import math
import socket
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from simulator import (
    FaultSpecError,
    RunningSimulator,
    SimulatorConfig,
    key_fingerprint,
    parse_fault_spec,
    running_simulator,
    serve,
)
from simulator.cli import add_arguments, config_from_args, parse_duration

pytestmark = pytest.mark.integration

OPENAI_KEY = "sk-sim-test-0123456789abcdefXYZW"
OTHER_OPENAI_KEY = "sk-sim-other-9876543210fedcbaQRST"
GEMINI_KEY = "AIzaSy-sim-test-0123456789abcdef"
OA_AUTH = {"Authorization": f"Bearer {OPENAI_KEY}"}
GM_AUTH = {"x-goog-api-key": GEMINI_KEY}
CHAT = "/v1/chat/completions"
GEN = "/v1beta/models/gemini-2.0-flash:generateContent"
GEN_SSE = "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse"


def chat_body(prompt: str = "What is the capital of France?", **extra: Any) -> dict[str, Any]:
    return {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": prompt},
        ],
        **extra,
    }


def gemini_body(prompt: str = "What is the capital of France?", **extra: Any) -> dict[str, Any]:
    return {
        "contents": [{"role": "user", "parts": [{"text": prompt}]}],
        "systemInstruction": {"parts": [{"text": "Answer briefly."}]},
        **extra,
    }


def sse_data(text: str, separator: str = "\n\n") -> list[str]:
    """The ``data:`` payloads of a complete SSE body."""
    events = [e for e in text.split(separator) if e.strip()]
    assert all(e.startswith("data: ") for e in events), events
    return [e[len("data: ") :] for e in events]


async def collect(
    client: httpx.AsyncClient, url: str, **kwargs: Any
) -> tuple[bytes, BaseException | None]:
    """Read a streamed body until it ends or the transport fails; bounded by the timeout."""
    received = b""
    try:
        async with client.stream("POST", url, **kwargs) as response:
            async for chunk in response.aiter_raw():
                received += chunk
    except httpx.TransportError as exc:
        return received, exc
    return received, None


@pytest.fixture
async def sim() -> AsyncIterator[RunningSimulator]:
    async with running_simulator(SimulatorConfig()) as running:
        yield running


@pytest.fixture
async def client(sim: RunningSimulator) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=sim.base_url, timeout=5.0) as c:
        yield c


# --------------------------------------------------------------------------- OpenAI


async def test_openai_unary_shape_usage_and_echo(client: httpx.AsyncClient) -> None:
    r = await client.post(CHAT, json=chat_body(), headers=OA_AUTH)
    assert r.status_code == 200
    assert r.headers["x-ratelimit-reset-requests"]
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert body["model"] == "gpt-4o-mini"
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] == "stop"
    content = choice["message"]["content"]
    assert "What is the capital of France?" in content
    usage = body["usage"]
    assert usage["completion_tokens"] == len(content.split()) == 24
    assert usage["prompt_tokens"] == 8  # "Answer briefly." + the 6-word question
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_openai_answers_are_deterministic(client: httpx.AsyncClient) -> None:
    async def content(body: dict[str, Any]) -> str:
        r = await client.post(CHAT, json=body, headers=OA_AUTH)
        return str(r.json()["choices"][0]["message"]["content"])

    first = await content(chat_body("Tell me about tides"))
    assert await content(chat_body("Tell me about tides")) == first
    assert await content(chat_body("Tell me about winds")) != first
    other_system = chat_body("Tell me about tides")
    other_system["messages"][0]["content"] = "Answer at length."
    assert await content(other_system) != first
    # another instance with the same config answers the same
    async with running_simulator(SimulatorConfig()) as other:
        r = await client.post(
            f"{other.base_url}{CHAT}", json=chat_body("Tell me about tides"), headers=OA_AUTH
        )
        assert r.json()["choices"][0]["message"]["content"] == first


async def test_openai_stream_with_usage(client: httpx.AsyncClient) -> None:
    unary = await client.post(CHAT, json=chat_body(), headers=OA_AUTH)
    body = chat_body(stream=True, stream_options={"include_usage": True})
    r = await client.post(CHAT, json=body, headers=OA_AUTH)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    payloads = sse_data(r.text)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    usage_chunk, final = chunks[-1], chunks[-2]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["completion_tokens"] == 24
    assert final["choices"][0]["finish_reason"] == "stop"
    assert final["choices"][0]["delta"] == {}
    assert all(c["usage"] is None for c in chunks[:-1])
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1])
    assert text == unary.json()["choices"][0]["message"]["content"]


async def test_openai_stream_without_usage_chunk(client: httpx.AsyncClient) -> None:
    r = await client.post(CHAT, json=chat_body(stream=True), headers=OA_AUTH)
    chunks = [json.loads(p) for p in sse_data(r.text)[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert all("usage" not in c for c in chunks)


async def test_openai_max_tokens_truncates(client: httpx.AsyncClient) -> None:
    r = await client.post(CHAT, json=chat_body(max_tokens=5), headers=OA_AUTH)
    body = r.json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 5
    assert len(body["choices"][0]["message"]["content"].split()) == 5
    r = await client.post(
        CHAT, json=chat_body(max_completion_tokens=3, stream=True), headers=OA_AUTH
    )
    chunks = [json.loads(p) for p in sse_data(r.text)[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert sum(1 for c in chunks if c["choices"][0]["delta"].get("content")) == 3
    # a limit above the natural length changes nothing
    r = await client.post(CHAT, json=chat_body(max_tokens=500), headers=OA_AUTH)
    assert r.json()["choices"][0]["finish_reason"] == "stop"


async def test_openai_missing_or_malformed_auth_is_401(client: httpx.AsyncClient) -> None:
    for headers in ({}, {"Authorization": OPENAI_KEY}, {"Authorization": "Basic dXNlcjpwYXNz"}):
        r = await client.post(CHAT, json=chat_body(), headers=headers)
        assert r.status_code == 401
        error = r.json()["error"]
        assert set(error) >= {"message", "type", "code"}
        assert error["type"] == "invalid_request_error"


async def test_openai_request_validation(client: httpx.AsyncClient) -> None:
    cases: list[tuple[Any, str | None]] = [
        ({"model": "gpt-4o-mini", "messages": []}, "messages"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "model"),
        (chat_body(temperature=3), "temperature"),
        (chat_body(max_tokens=0), "max_tokens"),
        (chat_body(stream_options={"include_usage": True}), "stream_options"),
        (chat_body(prompt_text="x"), None),
        ({"model": "gpt-4o-mini", "messages": [{"role": "robot", "content": "hi"}]}, None),
    ]
    for body, param in cases:
        r = await client.post(CHAT, json=body, headers=OA_AUTH)
        assert r.status_code == 400, body
        error = r.json()["error"]
        assert error["type"] == "invalid_request_error"
        if param is not None:
            assert error["param"] == param
    r = await client.post(CHAT, content=b"{not json", headers=OA_AUTH)
    assert r.status_code == 400
    assert "parse the JSON body" in r.json()["error"]["message"]


async def test_openai_embeddings(client: httpx.AsyncClient) -> None:
    body = {"model": "text-embedding-3-small", "input": ["hello world", "good night moon"]}
    r = await client.post("/v1/embeddings", json=body, headers=OA_AUTH)
    assert r.status_code == 200
    payload = r.json()
    assert payload["object"] == "list"
    assert payload["usage"] == {"prompt_tokens": 5, "total_tokens": 5}
    vectors = [d["embedding"] for d in payload["data"]]
    assert [d["index"] for d in payload["data"]] == [0, 1]
    assert all(len(v) == 1536 for v in vectors)
    assert all(math.isclose(math.fsum(x * x for x in v), 1.0, rel_tol=1e-9) for v in vectors)
    again = await client.post("/v1/embeddings", json=body, headers=OA_AUTH)
    assert again.json()["data"][0]["embedding"] == vectors[0]
    # dimensions and base64 (what the official SDK asks for by default)
    r = await client.post(
        "/v1/embeddings",
        json={
            "model": "text-embedding-3-small",
            "input": "hello world",
            "encoding_format": "base64",
        },
        headers=OA_AUTH,
    )
    raw = base64.b64decode(r.json()["data"][0]["embedding"])
    floats = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert len(floats) == 1536
    assert all(math.isclose(a, b, abs_tol=1e-6) for a, b in zip(floats, vectors[0], strict=True))
    r = await client.post(
        "/v1/embeddings",
        json={"model": "text-embedding-3-small", "input": "hello", "dimensions": 64},
        headers=OA_AUTH,
    )
    assert len(r.json()["data"][0]["embedding"]) == 64
    r = await client.post(
        "/v1/embeddings", json={"model": "text-embedding-3-small", "input": ""}, headers=OA_AUTH
    )
    assert r.status_code == 400


async def test_embedding_similarity_follows_shared_words() -> None:
    def cosine(a: list[float], b: list[float]) -> float:
        return math.fsum(x * y for x, y in zip(a, b, strict=True))

    async with (
        running_simulator() as words,
        running_simulator(SimulatorConfig(embedding_mode="hash")) as hashed,
        httpx.AsyncClient(timeout=5.0) as client,
    ):

        async def embed(base: str, text: str) -> list[float]:
            r = await client.post(
                f"{base}/v1/embeddings",
                json={"model": "text-embedding-3-small", "input": text},
                headers=OA_AUTH,
            )
            return list(r.json()["data"][0]["embedding"])

        a = await embed(words.base_url, "convert 100 USD to EUR")
        b = await embed(words.base_url, "convert 100 EUR to USD")
        c = await embed(words.base_url, "convert 100 USD to GBP")
        d = await embed(words.base_url, "bake a chocolate cake tonight")
        assert cosine(a, b) == pytest.approx(1.0)  # same words: a semantic cache must guard
        assert 0.6 < cosine(a, c) < 0.95
        assert abs(cosine(a, d)) < 0.2
        e = await embed(hashed.base_url, "convert 100 USD to EUR")
        f = await embed(hashed.base_url, "convert 100 EUR to USD")
        assert abs(cosine(e, f)) < 0.2


# --------------------------------------------------------------------------- Gemini


async def test_gemini_unary_shape(client: httpx.AsyncClient) -> None:
    r = await client.post(GEN, json=gemini_body(), headers=GM_AUTH)
    assert r.status_code == 200
    body = r.json()
    candidate = body["candidates"][0]
    assert candidate["content"]["role"] == "model"
    text = "".join(p["text"] for p in candidate["content"]["parts"])
    assert "What is the capital of France?" in text
    assert candidate["finishReason"] == "STOP"
    usage = body["usageMetadata"]
    assert usage["promptTokenCount"] == 8
    assert usage["candidatesTokenCount"] == len(text.split()) == 24
    assert usage["totalTokenCount"] == 32
    assert body["modelVersion"] == "gemini-2.0-flash"
    # the system instruction is part of the conversation: it changes the answer
    r2 = await client.post(GEN, json={"contents": gemini_body()["contents"]}, headers=GM_AUTH)
    assert r2.json()["candidates"][0]["content"]["parts"][0]["text"] != text


async def test_gemini_stream_sse(client: httpx.AsyncClient) -> None:
    unary = await client.post(GEN, json=gemini_body(), headers=GM_AUTH)
    r = await client.post(GEN_SSE, json=gemini_body(), headers=GM_AUTH)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.text.endswith("\r\n\r\n")
    events = [json.loads(p) for p in sse_data(r.text, "\r\n\r\n")]
    assert len(events) == 6  # 24 words, 4 per event
    assert all("finishReason" not in e["candidates"][0] for e in events[:-1])
    assert events[-1]["candidates"][0]["finishReason"] == "STOP"
    assert events[-1]["usageMetadata"]["candidatesTokenCount"] == 24
    assert events[-1]["usageMetadata"]["totalTokenCount"] == 32
    assert "candidatesTokenCount" not in events[0]["usageMetadata"]
    text = "".join(e["candidates"][0]["content"]["parts"][0]["text"] for e in events)
    assert text == unary.json()["candidates"][0]["content"]["parts"][0]["text"]


async def test_gemini_stream_without_alt_is_a_json_array(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/v1beta/models/gemini-2.0-flash:streamGenerateContent", json=gemini_body(), headers=GM_AUTH
    )
    events = r.json()
    assert isinstance(events, list)
    assert events[-1]["candidates"][0]["finishReason"] == "STOP"


async def test_gemini_max_output_tokens(client: httpx.AsyncClient) -> None:
    body = gemini_body(generationConfig={"maxOutputTokens": 6, "temperature": 0.2})
    r = await client.post(GEN, json=body, headers=GM_AUTH)
    candidate = r.json()["candidates"][0]
    assert candidate["finishReason"] == "MAX_TOKENS"
    assert len(candidate["content"]["parts"][0]["text"].split()) == 6
    r = await client.post(GEN_SSE, json=body, headers=GM_AUTH)
    events = [json.loads(p) for p in sse_data(r.text, "\r\n\r\n")]
    assert events[-1]["candidates"][0]["finishReason"] == "MAX_TOKENS"
    assert events[-1]["usageMetadata"]["candidatesTokenCount"] == 6
    # snake_case is accepted like the real API accepts it
    snake = {
        "contents": gemini_body()["contents"],
        "generation_config": {"max_output_tokens": 2},
    }
    r = await client.post(GEN, json=snake, headers=GM_AUTH)
    assert r.json()["candidates"][0]["finishReason"] == "MAX_TOKENS"


async def test_gemini_auth(client: httpx.AsyncClient) -> None:
    r = await client.post(GEN, json=gemini_body())
    assert r.status_code == 403
    assert r.json()["error"]["status"] == "PERMISSION_DENIED"
    assert r.json()["error"]["code"] == 403
    r = await client.post(f"{GEN}?key={GEMINI_KEY}", json=gemini_body())
    assert r.status_code == 200


async def test_gemini_request_validation(client: httpx.AsyncClient) -> None:
    bodies: list[dict[str, Any]] = [
        {"contents": []},
        {"contents": [{"role": "user", "parts": []}]},
        {**gemini_body(), "temperature": 0.5},  # must be inside generationConfig
        {"contents": [{"role": "assistant", "parts": [{"text": "x"}]}]},
    ]
    for body in bodies:
        r = await client.post(GEN, json=body, headers=GM_AUTH)
        assert r.status_code == 400, body
        assert r.json()["error"]["status"] == "INVALID_ARGUMENT"
    r = await client.post(GEN, content=b"[[", headers=GM_AUTH)
    assert r.status_code == 400
    r = await client.post("/v1beta/models/gemini-2.0-flash:fly", json={}, headers=GM_AUTH)
    assert r.status_code == 404


async def test_gemini_embeddings(client: httpx.AsyncClient) -> None:
    url = "/v1beta/models/text-embedding-004"
    r = await client.post(
        f"{url}:embedContent", json={"content": {"parts": [{"text": "hello"}]}}, headers=GM_AUTH
    )
    values = r.json()["embedding"]["values"]
    assert len(values) == 768
    assert math.isclose(math.fsum(v * v for v in values), 1.0, rel_tol=1e-9)
    batch: dict[str, Any] = {
        "requests": [
            {"model": "models/text-embedding-004", "content": {"parts": [{"text": "hello"}]}},
            {
                "model": "models/text-embedding-004",
                "content": {"parts": [{"text": "other"}]},
                "outputDimensionality": 32,
            },
        ]
    }
    r = await client.post(f"{url}:batchEmbedContents", json=batch, headers=GM_AUTH)
    embeddings = r.json()["embeddings"]
    assert embeddings[0]["values"] == values
    assert len(embeddings[1]["values"]) == 32
    batch["requests"][0]["model"] = "models/another-model"
    r = await client.post(f"{url}:batchEmbedContents", json=batch, headers=GM_AUTH)
    assert r.status_code == 400


# --------------------------------------------------------------------------- faults


async def test_openai_429_headers_from_header_and_marker(client: httpx.AsyncClient) -> None:
    r = await client.post(CHAT, json=chat_body(), headers={**OA_AUTH, "x-sim-fault": "429"})
    assert r.status_code == 429
    assert r.headers["retry-after"] == "1"
    assert r.headers["retry-after-ms"] == "1000"
    assert r.headers["x-ratelimit-reset-requests"] == "1s"
    assert r.headers["x-ratelimit-remaining-requests"] == "0"
    assert r.json()["error"]["code"] == "rate_limit_exceeded"
    r = await client.post(CHAT, json=chat_body("hi [[sim:429:2.5]]"), headers=OA_AUTH)
    assert r.status_code == 429
    assert r.headers["retry-after"] == "3"
    assert r.headers["retry-after-ms"] == "2500"
    assert r.headers["x-ratelimit-reset-requests"] == "2.5s"


async def test_gemini_429_retry_info(client: httpx.AsyncClient) -> None:
    r = await client.post(GEN, json=gemini_body("hi [[sim:429:37]]"), headers=GM_AUTH)
    assert r.status_code == 429
    error = r.json()["error"]
    assert error["status"] == "RESOURCE_EXHAUSTED"
    retry = [d for d in error["details"] if d["@type"].endswith("google.rpc.RetryInfo")]
    assert retry == [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37s"}]


@pytest.mark.parametrize("status", [400, 401, 403, 404, 500, 503, 504])
async def test_status_faults_have_provider_shapes(client: httpx.AsyncClient, status: int) -> None:
    fault = {"x-sim-fault": str(status)}
    r = await client.post(CHAT, json=chat_body(), headers={**OA_AUTH, **fault})
    assert r.status_code == status
    if status == 504:
        assert r.headers["content-type"].startswith("text/html")
    else:
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    r = await client.post(GEN, json=gemini_body(), headers={**GM_AUTH, **fault})
    assert r.status_code == status
    error = r.json()["error"]
    assert error["code"] == status
    assert (
        error["status"]
        == {
            400: "INVALID_ARGUMENT",
            401: "UNAUTHENTICATED",
            403: "PERMISSION_DENIED",
            404: "NOT_FOUND",
            500: "INTERNAL",
            503: "UNAVAILABLE",
            504: "DEADLINE_EXCEEDED",
        }[status]
    )


async def test_502_is_an_html_gateway_page(client: httpx.AsyncClient) -> None:
    for url, body, auth in ((CHAT, chat_body(), OA_AUTH), (GEN, gemini_body(), GM_AUTH)):
        r = await client.post(url, json=body, headers={**auth, "x-sim-fault": "502"})
        assert r.status_code == 502
        assert r.headers["content-type"].startswith("text/html")


async def test_quota_and_badkey(client: httpx.AsyncClient) -> None:
    r = await client.post(CHAT, json=chat_body("[[sim:quota]] hi"), headers=OA_AUTH)
    assert r.status_code == 429
    assert r.json()["error"]["code"] == "insufficient_quota"
    assert "retry-after" not in r.headers
    r = await client.post(CHAT, json=chat_body("[[sim:badkey]] hi"), headers=OA_AUTH)
    assert r.status_code == 401
    message = r.json()["error"]["message"]
    assert r.json()["error"]["code"] == "invalid_api_key"
    assert OPENAI_KEY not in message
    assert OPENAI_KEY[-4:] in message
    r = await client.post(GEN, json=gemini_body("[[sim:badkey]] hi"), headers=GM_AUTH)
    assert r.status_code == 400  # what the production Gemini API answers for a bad key
    error = r.json()["error"]
    assert error["status"] == "INVALID_ARGUMENT"
    assert error["details"][0]["reason"] == "API_KEY_INVALID"


async def test_invalid_and_rate_limited_keys() -> None:
    bad_gemini = "AIzaSy-sim-bad-key-0000000000000"
    config = SimulatorConfig(
        invalid_keys=frozenset({OTHER_OPENAI_KEY, key_fingerprint(bad_gemini)}),
        rate_limited_keys=frozenset({"sk-always-limited-000000000000"}),
        retry_after_s=7,
    )
    async with (
        running_simulator(config) as sim,
        httpx.AsyncClient(base_url=sim.base_url, timeout=5.0) as client,
    ):
        other = {"Authorization": f"Bearer {OTHER_OPENAI_KEY}"}
        r = await client.post(CHAT, json=chat_body(), headers=other)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "invalid_api_key"
        assert (await client.post(CHAT, json=chat_body(), headers=OA_AUTH)).status_code == 200
        r = await client.post(GEN, json=gemini_body(), headers={"x-goog-api-key": bad_gemini})
        assert r.status_code == 401
        assert r.json()["error"]["status"] == "UNAUTHENTICATED"
        assert r.json()["error"]["details"][0]["reason"] == "API_KEY_INVALID"
        limited = {"Authorization": "Bearer sk-always-limited-000000000000"}
        r = await client.post(CHAT, json=chat_body(), headers=limited)
        assert r.status_code == 429
        assert r.headers["retry-after"] == "7"
        stats = sim.stats
        assert stats.by_key[key_fingerprint(OTHER_OPENAI_KEY)] == 1
        assert stats.by_key[key_fingerprint(OPENAI_KEY)] == 1
        assert stats.faults["invalid_key"] == 2
        assert stats.faults["rate_limited_key"] == 1
    async with (
        running_simulator(
            SimulatorConfig(invalid_keys=frozenset({bad_gemini}), gemini_invalid_key_status=400)
        ) as sim,
        httpx.AsyncClient(base_url=sim.base_url, timeout=5.0) as client,
    ):
        r = await client.post(GEN, json=gemini_body(), headers={"x-goog-api-key": bad_gemini})
        assert r.status_code == 400
        assert r.json()["error"]["status"] == "INVALID_ARGUMENT"


async def test_per_key_request_window() -> None:
    config = SimulatorConfig(key_rate_limit=2, key_rate_window_s=30)
    async with (
        running_simulator(config) as sim,
        httpx.AsyncClient(base_url=sim.base_url, timeout=5.0) as client,
    ):
        remaining = []
        for _ in range(2):
            r = await client.post(CHAT, json=chat_body(), headers=OA_AUTH)
            assert r.status_code == 200
            remaining.append(r.headers["x-ratelimit-remaining-requests"])
        assert remaining == ["1", "0"]
        r = await client.post(CHAT, json=chat_body(), headers=OA_AUTH)
        assert r.status_code == 429
        assert 1 <= int(r.headers["retry-after"]) <= 30
        r = await client.post(GEN, json=gemini_body(), headers=GM_AUTH)  # another key
        assert r.status_code == 200
        await client.post(GEN, json=gemini_body(), headers=GM_AUTH)
        r = await client.post(GEN, json=gemini_body(), headers=GM_AUTH)
        assert r.status_code == 429
        assert r.json()["error"]["details"][-1]["retryDelay"].endswith("s")
        assert sim.stats.faults["key_rate_limit"] == 2
        await client.post("/_sim/reset")
        assert (await client.post(CHAT, json=chat_body(), headers=OA_AUTH)).status_code == 200


async def test_count_and_probability_modifiers(client: httpx.AsyncClient) -> None:
    once = {**OA_AUTH, "x-sim-fault": "503*1"}
    assert (await client.post(CHAT, json=chat_body("a"), headers=once)).status_code == 503
    assert (await client.post(CHAT, json=chat_body("a"), headers=once)).status_code == 200
    # the budget is per conversation: another prompt gets its own first failure
    assert (await client.post(CHAT, json=chat_body("b"), headers=once)).status_code == 503
    body = chat_body("[[sim:500*2]] retry me")
    statuses = [(await client.post(CHAT, json=body, headers=OA_AUTH)).status_code for _ in range(3)]
    assert statuses == [500, 500, 200]
    never = {**OA_AUTH, "x-sim-fault": "500%0"}
    always = {**OA_AUTH, "x-sim-fault": "500%100"}
    for _ in range(5):
        assert (await client.post(CHAT, json=chat_body(), headers=never)).status_code == 200
        assert (await client.post(CHAT, json=chat_body(), headers=always)).status_code == 500
    # markers are not part of the conversation: the answer is the same without them
    plain = await client.post(CHAT, json=chat_body("retry me"), headers=OA_AUTH)
    marked = await client.post(CHAT, json=body, headers=OA_AUTH)
    content = marked.json()["choices"][0]["message"]["content"]
    assert content == plain.json()["choices"][0]["message"]["content"]
    assert "[[sim:" not in content


async def test_targeted_faults(client: httpx.AsyncClient) -> None:
    # one prompt, as a proxy would send it to both its embedder and its provider
    prompt = "[[sim:500@embed]] [[sim:429@gemini]] what is 2+2"
    r = await client.post(
        "/v1/embeddings", json={"model": "text-embedding-3-small", "input": prompt}, headers=OA_AUTH
    )
    assert r.status_code == 500
    assert (await client.post(CHAT, json=chat_body(prompt), headers=OA_AUTH)).status_code == 200
    assert (await client.post(GEN, json=gemini_body(prompt), headers=GM_AUTH)).status_code == 429


async def test_run_level_faults() -> None:
    async with (
        running_simulator(SimulatorConfig(faults="503*2")) as sim,
        httpx.AsyncClient(base_url=sim.base_url, timeout=5.0) as client,
    ):
        r1 = await client.post(CHAT, json=chat_body("x"), headers=OA_AUTH)
        r2 = await client.post(GEN, json=gemini_body("y"), headers=GM_AUTH)
        r3 = await client.post(CHAT, json=chat_body("z"), headers=OA_AUTH)
        assert (r1.status_code, r2.status_code, r3.status_code) == (503, 503, 200)
        # a per-request fault takes precedence over the run-level one
    async with (
        running_simulator(SimulatorConfig(faults="500")) as sim,
        httpx.AsyncClient(base_url=sim.base_url, timeout=5.0) as client,
    ):
        r = await client.post(CHAT, json=chat_body(), headers={**OA_AUTH, "x-sim-fault": "429"})
        assert r.status_code == 429


@pytest.mark.parametrize(
    ("url", "body", "auth"),
    [(CHAT, chat_body(stream=True), OA_AUTH), (GEN_SSE, gemini_body(), GM_AUTH)],
    ids=["openai", "gemini"],
)
async def test_connection_reset(
    client: httpx.AsyncClient, sim: RunningSimulator, url: str, body: Any, auth: Any
) -> None:
    with pytest.raises(httpx.TransportError):
        await client.post(url, json=body, headers={**auth, "x-sim-fault": "reset"})
    assert sim.stats.by_status["reset"] == 1
    # the next request on a fresh connection works
    assert (await client.post(url, json=body, headers=auth)).status_code == 200


async def test_truncated_streams(client: httpx.AsyncClient) -> None:
    received, error = await collect(
        client, CHAT, json=chat_body(stream=True), headers={**OA_AUTH, "x-sim-fault": "truncate:3"}
    )
    assert isinstance(error, httpx.RemoteProtocolError)
    payloads = [json.loads(p) for p in sse_data(received.decode())]
    contents = [p["choices"][0]["delta"].get("content") for p in payloads]
    assert len([c for c in contents if c]) == 3
    assert b"[DONE]" not in received
    assert all(p["choices"][0]["finish_reason"] is None for p in payloads)

    received, error = await collect(
        client, GEN_SSE, json=gemini_body(), headers={**GM_AUTH, "x-sim-fault": "truncate"}
    )
    assert isinstance(error, httpx.RemoteProtocolError)
    events = sse_data(received.decode(), "\r\n\r\n")
    assert len(events) == 1
    assert b"finishReason" not in received
    # a stream always loses its end, even when N exceeds the number of chunks
    received, error = await collect(
        client, GEN_SSE, json=gemini_body(), headers={**GM_AUTH, "x-sim-fault": "truncate:99"}
    )
    assert error is not None
    assert b"finishReason" not in received


async def test_truncated_unary(client: httpx.AsyncClient) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        await client.post(CHAT, json=chat_body(), headers={**OA_AUTH, "x-sim-fault": "truncate"})
    with pytest.raises(httpx.RemoteProtocolError):
        await client.post(GEN, json=gemini_body(), headers={**GM_AUTH, "x-sim-fault": "truncate"})


async def test_malformed_bodies(client: httpx.AsyncClient) -> None:
    r = await client.post(CHAT, json=chat_body(), headers={**OA_AUTH, "x-sim-fault": "malformed"})
    assert r.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(r.text)
    r = await client.post(
        CHAT, json=chat_body(stream=True), headers={**OA_AUTH, "x-sim-fault": "malformed:2"}
    )
    payloads = sse_data(r.text)
    assert payloads[-1] == "[DONE]"
    bad = []
    for p in payloads[:-1]:
        try:
            json.loads(p)
        except json.JSONDecodeError:
            bad.append(p)
    assert len(bad) == 1
    r = await client.post(
        GEN_SSE, json=gemini_body(), headers={**GM_AUTH, "x-sim-fault": "malformed"}
    )
    with pytest.raises(json.JSONDecodeError):
        [json.loads(p) for p in sse_data(r.text, "\r\n\r\n")]


@pytest.mark.parametrize(
    ("path", "body", "auth"),
    [(CHAT, chat_body(), OA_AUTH), (CHAT, chat_body(stream=True), OA_AUTH),
     (GEN, gemini_body(), GM_AUTH), (GEN_SSE, gemini_body(), GM_AUTH)],
)  # fmt: skip
async def test_bodies_that_are_not_the_apis(
    client: httpx.AsyncClient, path: str, body: dict[str, Any], auth: dict[str, str]
) -> None:
    streaming = "stream" in path or body.get("stream") is True
    html = await client.post(path, json=body, headers={**auth, "x-sim-fault": "html"})
    assert html.status_code == 200
    assert html.headers["content-type"].startswith("text/html")
    assert html.text.startswith("<!DOCTYPE html>")
    empty = await client.post(path, json=body, headers={**auth, "x-sim-fault": "empty"})
    expected_type = "text/event-stream" if streaming else "application/json"
    assert (empty.status_code, empty.content) == (200, b"")
    assert empty.headers["content-type"].startswith(expected_type)
    garbage = await client.post(path, json=body, headers={**auth, "x-sim-fault": "garbage"})
    assert garbage.status_code == 200
    assert garbage.headers["content-type"].startswith(expected_type)
    if streaming:
        data = sse_data(garbage.text)
        assert data
        assert "[DONE]" not in data
        texts = data
    else:
        texts = [garbage.text]
    for text in texts:
        with pytest.raises(json.JSONDecodeError):
            json.loads(text)


async def test_tokens_fault_reports_the_given_prompt_token_count(client: httpx.AsyncClient) -> None:
    huge = 2**40
    spec = {"x-sim-fault": f"tokens:{huge}"}
    r = await client.post(CHAT, json=chat_body(), headers={**OA_AUTH, **spec})
    assert r.json()["usage"]["prompt_tokens"] == huge
    assert r.json()["choices"][0]["message"]["content"].startswith("sim-")
    r = await client.post(GEN, json=gemini_body(), headers={**GM_AUTH, **spec})
    assert r.json()["usageMetadata"]["promptTokenCount"] == huge


async def test_midstream_error_event(client: httpx.AsyncClient) -> None:
    r = await client.post(
        CHAT, json=chat_body(stream=True), headers={**OA_AUTH, "x-sim-fault": "midstream:2"}
    )
    payloads = sse_data(r.text)
    assert json.loads(payloads[-1])["error"]["type"] == "server_error"
    assert "[DONE]" not in payloads
    r = await client.post(
        GEN_SSE, json=gemini_body(), headers={**GM_AUTH, "x-sim-fault": "midstream"}
    )
    events = [json.loads(p) for p in sse_data(r.text, "\r\n\r\n")]
    assert events[-1]["error"]["status"] == "INTERNAL"
    assert "candidates" in events[0]


async def test_stalled_stream_and_client_disconnect(
    client: httpx.AsyncClient, sim: RunningSimulator
) -> None:
    started = time.monotonic()
    received, error = await collect(
        client,
        CHAT,
        json=chat_body(stream=True),
        headers={**OA_AUTH, "x-sim-fault": "stall:2"},
        timeout=httpx.Timeout(5.0, read=0.3),
    )
    assert isinstance(error, httpx.ReadTimeout)
    assert time.monotonic() - started < 2
    assert len(sse_data(received.decode())) == 3  # role chunk + 2 content chunks, then silence
    assert await sim.stats.wait_until(lambda s: s.client_disconnects == 1 and s.in_flight == 0)
    assert sim.stats.client_disconnects_by_endpoint["openai.chat.stream"] == 1
    assert sim.stats.by_status["499"] == 1
    assert sim.stats.streams_completed == 0


async def test_stall_timeout_drops_the_connection() -> None:
    async with (
        running_simulator(SimulatorConfig(stall_timeout_s=0.2)) as sim,
        httpx.AsyncClient(base_url=sim.base_url, timeout=5.0) as client,
    ):
        started = time.monotonic()
        with pytest.raises(httpx.TransportError):
            await client.post(GEN, json=gemini_body(), headers={**GM_AUTH, "x-sim-fault": "stall"})
        assert 0.2 <= time.monotonic() - started < 2
        assert sim.stats.by_status["stall_timeout"] == 1


async def test_shutdown_does_not_wait_for_stalled_streams() -> None:
    async with httpx.AsyncClient(timeout=5.0) as client:
        async with running_simulator(shutdown_timeout=5.0) as sim:
            pending = asyncio.create_task(
                collect(
                    client,
                    f"{sim.base_url}{GEN_SSE}",
                    json=gemini_body(),
                    headers={**GM_AUTH, "x-sim-fault": "stall"},
                )
            )
            assert await sim.stats.wait_until(lambda s: s.streams_started == 1)
            started = time.monotonic()
        assert time.monotonic() - started < 2  # not the 5 s shutdown timeout
        received, error = await asyncio.wait_for(pending, 2)
        assert isinstance(error, httpx.TransportError)
        assert b"candidates" in received


async def test_client_cancelling_a_slow_stream_is_recorded() -> None:
    config = SimulatorConfig(chunk_delay_s=0.05)
    async with (
        running_simulator(config) as sim,
        httpx.AsyncClient(base_url=sim.base_url, timeout=5.0) as client,
    ):
        async with client.stream("POST", GEN_SSE, json=gemini_body(), headers=GM_AUTH) as r:
            async for _ in r.aiter_raw():
                break  # the first event arrived: walk away
        assert await sim.stats.wait_until(lambda s: s.client_disconnects == 1 and s.in_flight == 0)
        assert sim.stats.client_disconnects_by_endpoint["gemini.stream"] == 1
        # a client giving up on a slow unary call is recorded too
        slow = {**OA_AUTH, "x-sim-fault": "delay:2000"}
        with pytest.raises(httpx.ReadTimeout):
            await client.post(CHAT, json=chat_body(), headers=slow, timeout=0.2)
        assert await sim.stats.wait_until(lambda s: s.client_disconnects == 2 and s.in_flight == 0)


async def test_latency_knobs() -> None:
    config = SimulatorConfig(unary_latency_s=0.15, ttft_s=0.15, chunk_delay_s=0.01)
    async with (
        running_simulator(config) as sim,
        httpx.AsyncClient(base_url=sim.base_url, timeout=5.0) as client,
    ):
        started = time.monotonic()
        await client.post(CHAT, json=chat_body(), headers=OA_AUTH)
        assert time.monotonic() - started >= 0.15
        started = time.monotonic()
        first_at = None
        async with client.stream("POST", CHAT, json=chat_body(stream=True), headers=OA_AUTH) as r:
            async for _ in r.aiter_raw():
                first_at = first_at or time.monotonic() - started
        total = time.monotonic() - started
        assert first_at is not None
        assert first_at >= 0.15
        assert total >= 0.15 + 0.01 * 25  # 27 events: 26 gaps, minus timer slack


async def test_per_request_modifiers(client: httpx.AsyncClient) -> None:
    started = time.monotonic()
    r = await client.post(CHAT, json=chat_body(), headers={**OA_AUTH, "x-sim-fault": "delay:150"})
    assert r.status_code == 200
    assert time.monotonic() - started >= 0.15
    r = await client.post(CHAT, json=chat_body("[[sim:words:5]] short please"), headers=OA_AUTH)
    assert r.json()["usage"]["completion_tokens"] == 5
    started = time.monotonic()
    r = await client.post(
        GEN_SSE, json=gemini_body(), headers={**GM_AUTH, "x-sim-fault": "slow:40,words:8"}
    )
    assert len(sse_data(r.text, "\r\n\r\n")) == 2
    assert time.monotonic() - started >= 0.04
    # delay then a status: how a slow upstream failure looks
    started = time.monotonic()
    r = await client.post(
        CHAT, json=chat_body(), headers={**OA_AUTH, "x-sim-fault": "delay:100,503"}
    )
    assert r.status_code == 503
    assert time.monotonic() - started >= 0.1


async def test_invalid_fault_specs(client: httpx.AsyncClient) -> None:
    r = await client.post(CHAT, json=chat_body(), headers={**OA_AUTH, "x-sim-fault": "explode"})
    assert r.status_code == 400
    assert "fault" in r.json()["error"]["message"]
    r = await client.post(GEN, json=gemini_body("[[sim:200]]"), headers=GM_AUTH)
    assert r.status_code == 400
    with pytest.raises(ValueError, match="faults"):
        SimulatorConfig(faults="429:abc")
    with pytest.raises(ValueError, match="ttft_s"):
        SimulatorConfig(ttft_s=-1)


def test_fault_spec_grammar() -> None:
    items = parse_fault_spec(" 429:2.5*3%50@chat , slow:10, truncate:4, RESET@gemini ")
    assert [(i.name, i.status, i.arg, i.limit, i.percent, i.target) for i in items] == [
        ("status", 429, 2.5, 3, 50.0, "chat"),
        ("slow", None, 10.0, None, None, None),
        ("truncate", None, 4.0, None, None, None),
        ("reset", None, None, None, None, "gemini"),
    ]
    assert parse_fault_spec("") == ()
    for bad in (
        "500:3",
        "delay",
        "words:0",
        "quota:1",
        "301",
        "50%x",
        "stall:1.5",
        "500%101",
        "500@db",
    ):
        with pytest.raises(FaultSpecError):
            parse_fault_spec(bad)


async def test_unknown_models_when_a_catalogue_is_configured() -> None:
    config = SimulatorConfig(models=frozenset({"gpt-4o-mini", "gemini-2.0-flash"}))
    async with (
        running_simulator(config) as sim,
        httpx.AsyncClient(base_url=sim.base_url, timeout=5.0) as client,
    ):
        r = await client.post(CHAT, json={**chat_body(), "model": "gpt-9"}, headers=OA_AUTH)
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "model_not_found"
        r = await client.post(
            "/v1beta/models/gemini-9:generateContent", json=gemini_body(), headers=GM_AUTH
        )
        assert r.status_code == 404
        assert r.json()["error"]["status"] == "NOT_FOUND"
        assert (await client.post(GEN, json=gemini_body(), headers=GM_AUTH)).status_code == 200
        r = await client.get("/v1/models", headers=OA_AUTH)
        assert [m["id"] for m in r.json()["data"]] == ["gemini-2.0-flash", "gpt-4o-mini"]
        r = await client.get("/v1beta/models", headers=GM_AUTH)
        assert "models/gpt-4o-mini" in [m["name"] for m in r.json()["models"]]


async def test_stats_over_http_and_reset(client: httpx.AsyncClient, sim: RunningSimulator) -> None:
    await client.post(CHAT, json=chat_body(), headers=OA_AUTH)
    await client.post(CHAT, json=chat_body(stream=True), headers=OA_AUTH)
    await client.post(GEN, json=gemini_body(), headers=GM_AUTH)
    await client.post(CHAT, json=chat_body())
    r = await client.get("/_sim/stats")
    stats = r.json()
    assert stats["requests_total"] == 4
    assert stats["by_endpoint"] == {"openai.chat": 2, "openai.chat.stream": 1, "gemini.generate": 1}
    assert stats["by_key"] == {key_fingerprint(OPENAI_KEY): 2, key_fingerprint(GEMINI_KEY): 1}
    assert stats["by_status"] == {"200": 3, "401": 1}
    assert stats["streams_started"] == stats["streams_completed"] == 1
    assert OPENAI_KEY not in r.text
    assert GEMINI_KEY not in r.text
    assert sim.stats.requests_total == 4
    assert (await client.post("/_sim/reset")).json() == {"reset": True}
    assert (await client.get("/_sim/stats")).json()["requests_total"] == 0
    assert (await client.get("/_sim/health")).json() == {"status": "ok"}


async def test_keys_never_reach_the_logs(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await client.post(CHAT, json=chat_body(), headers=OA_AUTH)
    await client.post(CHAT, json=chat_body("[[sim:429]]"), headers=OA_AUTH)
    await client.post(f"{GEN}?key={GEMINI_KEY}", json=gemini_body("[[sim:badkey]]"))
    await client.post(GEN_SSE, json=gemini_body(), headers=GM_AUTH)
    await asyncio.sleep(0.05)  # access log lines are written after the response
    # the client's own (httpx) logs print the URL; only the server side is checked here
    server_lines = "\n".join(
        r.getMessage() for r in caplog.records if r.name.startswith(("simulator", "aiohttp"))
    )
    assert "POST /v1beta/models/gemini-2.0-flash:generateContent 400" in server_lines
    assert key_fingerprint(OPENAI_KEY) in server_lines
    for secret in (OPENAI_KEY, GEMINI_KEY):
        assert secret not in server_lines


async def test_serve_runs_until_cancelled() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    task = asyncio.create_task(serve(SimulatorConfig(), "127.0.0.1", port))
    try:
        async with httpx.AsyncClient(timeout=1.0) as client:
            for _ in range(100):  # bounded: up to ~2 s for the server to come up
                try:
                    r = await client.get(f"http://127.0.0.1:{port}/_sim/health")
                    break
                except httpx.ConnectError:
                    await asyncio.sleep(0.02)
            else:
                pytest.fail("serve() did not start")
            assert r.status_code == 200
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_cli_flags_build_the_config() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        [
            "--port", "9999", "--ttft", "250ms", "--chunk-delay", "0.02", "--fault", "503%5",
            "--invalid-key", "sk-bad", "--key-rate-limit", "3", "--key-rate-window", "1m",
            "--gemini-invalid-key-status", "400",
        ]
    )  # fmt: skip
    config = config_from_args(args)
    assert args.port == 9999
    assert config.ttft_s == 0.25
    assert config.chunk_delay_s == 0.02
    assert config.faults == "503%5"
    assert config.invalid_keys == frozenset({"sk-bad"})
    assert config.key_rate_limit == 3
    assert config.key_rate_window_s == 60
    assert config.gemini_invalid_key_status == 400
    assert parse_duration("1.5s") == 1.5
    with pytest.raises(argparse.ArgumentTypeError):
        parse_duration("soon")


# --------------------------------------------------------------------------- Anthropic

AN_AUTH = {"x-api-key": "sk-ant-sim-test-0123456789", "anthropic-version": "2023-06-01"}


def messages_body(prompt: str = "What is the capital of France?", **extra: Any) -> dict[str, Any]:
    return {
        "model": "claude-sonnet-4-5",
        "max_tokens": 64,
        "system": "Answer briefly.",
        "messages": [{"role": "user", "content": prompt}],
        **extra,
    }


async def test_anthropic_message_and_its_named_stream_events(client: httpx.AsyncClient) -> None:
    unary = await client.post("/v1/messages", json=messages_body(), headers=AN_AUTH)
    assert unary.status_code == 200
    message = unary.json()
    assert (message["type"], message["role"], message["stop_reason"]) == (
        "message", "assistant", "end_turn",
    )  # fmt: skip
    assert message["usage"]["output_tokens"] > 0
    assert unary.headers["anthropic-ratelimit-requests-reset"].endswith("Z")
    streamed = await client.post("/v1/messages", json=messages_body(stream=True), headers=AN_AUTH)
    frames = [f.split("\n") for f in streamed.text.split("\n\n") if f]
    names = [f[0].removeprefix("event: ") for f in frames]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert all(
        json.loads(f[1].removeprefix("data: "))["type"] == n
        for f, n in zip(frames, names, strict=True)
    )
    text = "".join(
        json.loads(f[1].removeprefix("data: "))["delta"]["text"]
        for f, n in zip(frames, names, strict=True)
        if n == "content_block_delta"
    )
    assert text == message["content"][0]["text"]


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"max_tokens": None}, "max_tokens: Field required"),
        ({"temperature": 1.5}, "temperature"),
        ({"messages": [{"role": "system", "content": "x"}]}, "role"),
        (
            {
                "messages": [
                    {"role": "user", "content": "x"},
                    {"role": "assistant", "content": "a "},
                ]
            },
            "trailing whitespace",
        ),
    ],
)
async def test_anthropic_refuses_what_the_real_api_refuses(
    client: httpx.AsyncClient, body: dict[str, Any], says: str
) -> None:
    r = await client.post("/v1/messages", json=messages_body(**body), headers=AN_AUTH)
    assert r.status_code == 400
    error = r.json()
    assert error["type"] == "error"
    assert error["error"]["type"] == "invalid_request_error"
    assert says in error["error"]["message"]


async def test_anthropic_faults_overloaded_rate_limit_and_a_missing_key(
    client: httpx.AsyncClient,
) -> None:
    overloaded = await client.post(
        "/v1/messages", json=messages_body("x [[sim:529]]"), headers=AN_AUTH
    )
    limited = await client.post(
        "/v1/messages", json=messages_body("y [[sim:429:7]]"), headers=AN_AUTH
    )
    anonymous = await client.post("/v1/messages", json=messages_body())
    assert overloaded.status_code == 529
    assert overloaded.json()["error"]["type"] == "overloaded_error"
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "7"
    assert limited.headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert anonymous.status_code == 401
    listed = await client.get("/v1/models", headers=AN_AUTH)
    assert {m["id"] for m in listed.json()["data"]} >= {"claude-sonnet-4-5"}
