"""Contract tests: the Gemini adapter against an in-process upstream serving documented shapes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from adapters.outbound.providers import http_client
from adapters.outbound.providers.gemini import DEFAULT_BASE_URL, GeminiProvider
from domain.errors import (
    KeyRejected,
    MalformedAnswer,
    ProviderFailure,
    RateLimited,
    UpstreamFault,
    UpstreamRejected,
)
from domain.key_pool import ApiKey
from domain.model import (
    Completion,
    Delta,
    EmbeddingRequest,
    FinishReason,
    InferenceRequest,
    Message,
    Role,
    StreamEnd,
    Usage,
)
from tests.unit.test_openai_provider import Upstream

KEY = ApiKey("AIzaSyTESTKEY0123456789abcdefghijklmno")
BASE = "https://gemini.test"
MODELS = f"{BASE}/v1beta/models"


@pytest.fixture
def upstream() -> Upstream:
    return Upstream()


@pytest.fixture
async def provider(upstream: Upstream) -> AsyncIterator[GeminiProvider]:
    async with httpx.AsyncClient(transport=httpx.MockTransport(upstream.handle)) as client:
        yield GeminiProvider(client, base_url=BASE, stream_idle_timeout=0.2)


def request(**overrides: Any) -> InferenceRequest:
    fields: dict[str, Any] = {
        "model": "gemini-2.0-flash",
        "messages": (
            Message(Role.SYSTEM, "Be brief."),
            Message(Role.USER, "Hi"),
            Message(Role.ASSISTANT, "Hello!"),
            Message(Role.USER, "Say it again"),
        ),
    }
    fields.update(overrides)
    return InferenceRequest(**fields)


def response(
    *texts: str,
    finish: str | None = "STOP",
    usage: dict[str, int] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    candidate: dict[str, Any] = {
        "content": {"role": "model", "parts": [{"text": t} for t in texts]},
        "index": 0,
    }
    if finish is not None:
        candidate["finishReason"] = finish
    body: dict[str, Any] = {"candidates": [candidate], "modelVersion": "gemini-2.0-flash-001"}
    if usage is not None:
        body["usageMetadata"] = usage
    return body | extra


USAGE = {"promptTokenCount": 8, "candidatesTokenCount": 5, "totalTokenCount": 13}

STREAM = [
    response("Hel", finish=None, usage={"promptTokenCount": 8, "totalTokenCount": 8}),
    response("lo", finish=None, usage={"promptTokenCount": 8, "totalTokenCount": 8}),
    response("", finish="STOP", usage=USAGE, responseId="abc123"),
]


def sse(*events: object) -> bytes:
    # Gemini ends its events with CRLF pairs.
    return "".join(f"data: {json.dumps(e)}\r\n\r\n" for e in events).encode()


async def collect(provider: GeminiProvider, req: InferenceRequest | None = None) -> list[Any]:
    return [event async for event in provider.stream(req or request(), KEY)]


async def fails(provider: GeminiProvider, *, stream: bool) -> ProviderFailure:
    call = collect(provider) if stream else provider.complete(request(), KEY)
    with pytest.raises(ProviderFailure) as caught:
        await call
    return caught.value


# --- what the adapter sends ---------------------------------------------------------------------


async def test_complete_sends_the_documented_request(
    provider: GeminiProvider, upstream: Upstream
) -> None:
    upstream.reply(json_body=response("Hi"))
    await provider.complete(request(temperature=0.0, max_tokens=100), KEY)

    sent = upstream.requests[0]
    assert sent.method == "POST"
    assert str(sent.url) == f"{MODELS}/gemini-2.0-flash:generateContent"
    assert sent.headers["x-goog-api-key"] == KEY.value
    assert "authorization" not in sent.headers
    assert KEY.value not in str(sent.url)
    assert "key=" not in str(sent.url)
    assert upstream.sent == {
        "contents": [
            {"role": "user", "parts": [{"text": "Hi"}]},
            {"role": "model", "parts": [{"text": "Hello!"}]},
            {"role": "user", "parts": [{"text": "Say it again"}]},
        ],
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "generationConfig": {"temperature": 0.0, "maxOutputTokens": 100},
    }


async def test_unset_generation_config_and_system_are_omitted(
    provider: GeminiProvider, upstream: Upstream
) -> None:
    upstream.reply(json_body=response("Hi"))
    await provider.complete(InferenceRequest("gemini-2.0-flash", (Message(Role.USER, "Hi"),)), KEY)
    assert upstream.sent == {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]}


async def test_consecutive_turns_of_one_role_are_merged(
    provider: GeminiProvider, upstream: Upstream
) -> None:
    upstream.reply(json_body=response("Hi"))
    messages = (Message(Role.USER, "a"), Message(Role.USER, "b"))
    await provider.complete(request(messages=messages, temperature=0.7), KEY)
    assert upstream.sent["contents"] == [{"role": "user", "parts": [{"text": "a"}, {"text": "b"}]}]
    assert upstream.sent["generationConfig"] == {"temperature": 0.7}


async def test_stream_url_asks_for_sse(provider: GeminiProvider, upstream: Upstream) -> None:
    upstream.reply(chunks=[sse(*STREAM)])
    await collect(provider, request(model="models/gemini-2.5-pro"))
    sent = upstream.requests[0]
    assert str(sent.url) == f"{MODELS}/gemini-2.5-pro:streamGenerateContent?alt=sse"
    assert sent.url.params.get("key") is None
    assert sent.headers["x-goog-api-key"] == KEY.value


async def test_the_default_base_is_google() -> None:
    async with http_client(DEFAULT_BASE_URL) as client:
        assert client.base_url.host == httpx.URL(DEFAULT_BASE_URL).host
        assert "AIza" not in repr(GeminiProvider(client))


# --- unary answers ------------------------------------------------------------------------------


async def test_complete_maps_the_answer(provider: GeminiProvider, upstream: Upstream) -> None:
    upstream.reply(json_body=response("Hello", " there", usage=USAGE))
    assert await provider.complete(request(), KEY) == Completion(
        content="Hello there",
        model="gemini-2.0-flash-001",
        provider="gemini",
        finish_reason=FinishReason.STOP,
        usage=Usage(8, 5),
    )


async def test_thoughts_are_not_content_but_count_as_output(
    provider: GeminiProvider, upstream: Upstream
) -> None:
    answer = response("42", usage=USAGE | {"thoughtsTokenCount": 30})
    answer["candidates"][0]["content"]["parts"].insert(0, {"text": "Let me think", "thought": True})
    upstream.reply(json_body=answer)
    completion = await provider.complete(request(), KEY)
    assert completion.content == "42"
    assert completion.usage == Usage(8, 35)


@pytest.mark.parametrize(
    ("raw", "mapped"),
    [
        ("STOP", FinishReason.STOP),
        ("MAX_TOKENS", FinishReason.LENGTH),
        ("SAFETY", FinishReason.CONTENT_FILTER),
        ("RECITATION", FinishReason.CONTENT_FILTER),
        ("BLOCKLIST", FinishReason.CONTENT_FILTER),
        ("PROHIBITED_CONTENT", FinishReason.CONTENT_FILTER),
        ("SPII", FinishReason.CONTENT_FILTER),
        ("MALFORMED_FUNCTION_CALL", FinishReason.OTHER),
        ("OTHER", FinishReason.OTHER),
        (None, FinishReason.OTHER),
    ],
)
async def test_finish_reasons(
    provider: GeminiProvider, upstream: Upstream, raw: str | None, mapped: FinishReason
) -> None:
    upstream.reply(json_body=response("x", finish=raw))
    assert (await provider.complete(request(), KEY)).finish_reason is mapped


async def test_a_safety_stop_without_content(provider: GeminiProvider, upstream: Upstream) -> None:
    answer = {
        "candidates": [
            {"finishReason": "SAFETY", "safetyRatings": [{"category": "HARM_CATEGORY_HARASSMENT"}]}
        ]
    }
    upstream.reply(json_body=answer)
    completion = await provider.complete(request(), KEY)
    assert (completion.content, completion.finish_reason) == ("", FinishReason.CONTENT_FILTER)
    assert completion.model == "gemini-2.0-flash"


BLOCKED = {
    "promptFeedback": {"blockReason": "PROHIBITED_CONTENT"},
    "usageMetadata": {"promptTokenCount": 9, "totalTokenCount": 9},
    "modelVersion": "gemini-2.0-flash-001",
}


async def test_a_blocked_prompt_is_a_content_filter_answer(
    provider: GeminiProvider, upstream: Upstream
) -> None:
    upstream.reply(json_body=BLOCKED)
    assert await provider.complete(request(), KEY) == Completion(
        "", "gemini-2.0-flash-001", "gemini", FinishReason.CONTENT_FILTER, Usage(9, 0)
    )


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[]",
        b"{}",
        b'{"candidates": {}}',
        b'{"candidates": ["x"]}',
        b'{"candidates": [{"content": {"parts": "x"}, "finishReason": "STOP"}]}',
    ],
)
async def test_malformed_answers_are_faults(
    provider: GeminiProvider, upstream: Upstream, body: bytes
) -> None:
    upstream.reply(chunks=[body])
    assert isinstance(await fails(provider, stream=False), UpstreamFault)


# --- streamed answers ---------------------------------------------------------------------------


async def test_stream_yields_deltas_then_one_end(
    provider: GeminiProvider, upstream: Upstream
) -> None:
    upstream.reply(chunks=[sse(*STREAM)])
    assert await collect(provider) == [
        Delta("Hel"),
        Delta("lo"),
        StreamEnd("gemini-2.0-flash-001", FinishReason.STOP, Usage(8, 5)),
    ]


@pytest.mark.parametrize("size", [1, 2, 7, 50])
async def test_stream_survives_any_read_size(
    provider: GeminiProvider, upstream: Upstream, size: int
) -> None:
    raw = b": keep-alive\r\n\r\n" + sse(*STREAM[:2], response("ü€", finish="MAX_TOKENS"))
    upstream.reply(chunks=[raw[i : i + size] for i in range(0, len(raw), size)])
    events = await collect(provider)
    assert "".join(e.content for e in events if isinstance(e, Delta)) == "Helloü€"
    assert events[-1] == StreamEnd("gemini-2.0-flash-001", FinishReason.LENGTH, Usage(8, 0))


async def test_stream_of_a_blocked_prompt(provider: GeminiProvider, upstream: Upstream) -> None:
    upstream.reply(chunks=[sse(BLOCKED)])
    assert await collect(provider) == [
        StreamEnd("gemini-2.0-flash-001", FinishReason.CONTENT_FILTER, Usage(9, 0))
    ]


@pytest.mark.parametrize(
    "raw",
    [sse(*STREAM[:2]), sse(*STREAM)[:-2], sse(*STREAM)[:-40], b""],
)
async def test_truncated_streams_are_faults(
    provider: GeminiProvider, upstream: Upstream, raw: bytes
) -> None:
    upstream.reply(chunks=[raw])
    failure = await fails(provider, stream=True)
    assert isinstance(failure, UpstreamFault)
    assert "truncated" in str(failure)


@pytest.mark.parametrize(
    "raw", [b"data: {not json\r\n\r\n", b"data: \xc3\x28\r\n\r\n", b'data: "text"\r\n\r\n']
)
async def test_malformed_streams_are_faults(
    provider: GeminiProvider, upstream: Upstream, raw: bytes
) -> None:
    upstream.reply(chunks=[raw])
    assert isinstance(await fails(provider, stream=True), UpstreamFault)


async def test_an_error_event_mid_stream_is_classified(
    provider: GeminiProvider, upstream: Upstream
) -> None:
    error = {"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}}
    upstream.reply(chunks=[sse(STREAM[0], error)])
    stream = provider.stream(request(), KEY)
    assert await anext(stream) == Delta("Hel")
    with pytest.raises(UpstreamFault, match="overloaded"):
        await anext(stream)


async def test_a_stalled_stream_is_a_fault(provider: GeminiProvider, upstream: Upstream) -> None:
    body = upstream.reply(chunks=[sse(STREAM[0]), sse(*STREAM[1:])], pauses={1: 5.0})
    stream = provider.stream(request(), KEY)
    assert await anext(stream) == Delta("Hel")
    with pytest.raises(UpstreamFault, match="stalled"):
        await asyncio.wait_for(anext(stream), timeout=2.0)
    assert body.closed


async def test_aclose_closes_the_response(provider: GeminiProvider, upstream: Upstream) -> None:
    body = upstream.reply(chunks=[sse(STREAM[0]), sse(*STREAM[1:])], pauses={1: 5.0})
    stream = provider.stream(request(), KEY)
    assert await anext(stream) == Delta("Hel")
    await stream.aclose()
    assert body.closed


# --- failures -----------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_429_with_retry_info(
    provider: GeminiProvider, upstream: Upstream, stream: bool
) -> None:
    upstream.reply(
        429,
        json_body={
            "error": {
                "code": 429,
                "message": "You exceeded your current quota, please check your plan and billing "
                "details. Please retry in 37.2s.",
                "status": "RESOURCE_EXHAUSTED",
                "details": [
                    {
                        "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                        "violations": [
                            {
                                "quotaMetric": "generativelanguage.googleapis.com/"
                                "generate_content_free_tier_requests",
                                "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                            }
                        ],
                    },
                    {
                        "@type": "type.googleapis.com/google.rpc.Help",
                        "links": [{"url": "https://ai.google.dev/gemini-api/docs/rate-limits"}],
                    },
                    {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37s"},
                ],
            }
        },
    )
    failure = await fails(provider, stream=stream)
    assert isinstance(failure, RateLimited)
    assert failure.retry_after == 37.0
    assert "exceeded your current quota" in str(failure)


@pytest.mark.parametrize("stream", [False, True])
async def test_an_invalid_key_400_is_a_rejected_key(
    provider: GeminiProvider, upstream: Upstream, stream: bool
) -> None:
    upstream.reply(
        400,
        json_body={
            "error": {
                "code": 400,
                "message": f"API key not valid. Please pass a valid API key. ({KEY.value})",
                "status": "INVALID_ARGUMENT",
                "details": [
                    {
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": "API_KEY_INVALID",
                        "domain": "googleapis.com",
                        "metadata": {"service": "generativelanguage.googleapis.com"},
                    }
                ],
            }
        },
    )
    failure = await fails(provider, stream=stream)
    assert isinstance(failure, KeyRejected)
    assert "AIza" not in str(failure)
    assert KEY.value not in str(failure)


async def test_403_permission_denied_is_a_rejected_key(
    provider: GeminiProvider, upstream: Upstream
) -> None:
    upstream.reply(403, json_body={"error": {"code": 403, "status": "PERMISSION_DENIED"}})
    assert isinstance(await fails(provider, stream=False), KeyRejected)


@pytest.mark.parametrize("stream", [False, True])
async def test_an_unknown_model_is_rejected_with_a_redacted_message(
    provider: GeminiProvider, upstream: Upstream, stream: bool
) -> None:
    upstream.reply(
        404,
        json_body={
            "error": {
                "code": 404,
                "message": "models/gemini-9 is not found for API version v1beta "
                f"(request key {KEY.value[:30]})",
                "status": "NOT_FOUND",
            }
        },
    )
    failure = await fails(provider, stream=stream)
    assert isinstance(failure, UpstreamRejected)
    assert "models/gemini-9 is not found" in str(failure)
    assert "AIza" not in str(failure)


@pytest.mark.parametrize("stream", [False, True])
async def test_503_is_a_fault(provider: GeminiProvider, upstream: Upstream, stream: bool) -> None:
    upstream.reply(
        503,
        json_body={
            "error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}
        },
        headers={"retry-after": "Wed, 21 Oct 2099 07:28:00 GMT"},
    )
    failure = await fails(provider, stream=stream)
    assert isinstance(failure, UpstreamFault)
    assert failure.retry_after == 86_400.0  # capped


@pytest.mark.parametrize("stream", [False, True])
async def test_connection_errors_are_faults(
    provider: GeminiProvider, upstream: Upstream, stream: bool
) -> None:
    upstream.replies.append(httpx.ConnectTimeout("timed out"))
    assert isinstance(await fails(provider, stream=stream), UpstreamFault)


async def test_output_tokens_summing_past_int32_are_a_malformed_answer(
    provider: GeminiProvider, upstream: Upstream
) -> None:
    usage = {"promptTokenCount": 8, "candidatesTokenCount": 2**31 - 1, "thoughtsTokenCount": 5}
    upstream.reply(json_body=response("hi", usage=usage))
    with pytest.raises(MalformedAnswer, match="out of range"):
        await provider.complete(request(), KEY)


# --- prefill, trailing system messages, the model list -------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_a_prefill_is_refused_naming_messages_before_anything_is_sent(
    provider: GeminiProvider, upstream: Upstream, stream: bool
) -> None:
    prefill = request(messages=(Message(Role.USER, "Hi"), Message(Role.ASSISTANT, "Hel")))

    async def call() -> None:
        if stream:
            async for _ in provider.stream(prefill, KEY):
                pass
        else:
            await provider.complete(prefill, KEY)

    with pytest.raises(UpstreamRejected, match="prefill") as caught:
        await call()
    assert caught.value.param == "messages"
    assert not upstream.requests


async def test_a_system_message_after_the_user_joins_the_system_instruction(
    provider: GeminiProvider, upstream: Upstream
) -> None:
    upstream.reply(json_body=response("ok"))
    late = Message(Role.SYSTEM, "One word.")
    await provider.complete(request(messages=(*request().messages, late)), KEY)
    assert upstream.sent["systemInstruction"] == {"parts": [{"text": "Be brief.\n\nOne word."}]}
    assert upstream.sent["contents"][-1]["role"] == "user"


async def test_the_model_list_is_the_generating_and_embedding_models_by_their_short_name(
    provider: GeminiProvider, upstream: Upstream
) -> None:
    upstream.reply(
        json_body={
            "models": [
                {
                    "name": "models/gemini-2.0-flash",
                    "supportedGenerationMethods": ["generateContent"],
                },
                {
                    "name": "models/text-embedding-004",
                    "supportedGenerationMethods": ["embedContent"],
                },
            ]
        }
    )
    assert [m.id for m in await provider.models(KEY)] == ["gemini-2.0-flash", "text-embedding-004"]
    sent = upstream.requests[-1]
    assert (sent.method, sent.url.path) == ("GET", "/v1beta/models")
    assert sent.headers["x-goog-api-key"] == KEY.value


async def test_embeddings_are_batched_by_a_hundred_without_a_task_type(
    provider: GeminiProvider, upstream: Upstream
) -> None:
    def answer(count: int) -> dict[str, Any]:
        return {"embeddings": [{"values": [float(i), 1.0]} for i in range(count)]}

    upstream.reply(json_body=answer(100))
    upstream.reply(json_body=answer(5))
    texts = tuple(f"text {i}" for i in range(105))
    request = EmbeddingRequest("models/text-embedding-004", texts, dimensions=2)
    embedded = await provider.embed(request, KEY)
    assert len(embedded.vectors) == 105
    assert embedded.vectors[100] == (0.0, 1.0)
    assert upstream.requests[0].url.path == "/v1beta/models/text-embedding-004:batchEmbedContents"
    first = upstream.sent["requests"][0]
    assert first == {
        "model": "models/text-embedding-004",
        "content": {"parts": [{"text": "text 100"}]},
        "outputDimensionality": 2,
    }
