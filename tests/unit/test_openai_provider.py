"""Contract tests: the OpenAI adapter against an in-process upstream serving documented shapes."""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from adapters.outbound.providers import http_client
from adapters.outbound.providers.openai import DEFAULT_BASE_URL, OpenAIProvider
from domain.errors import (
    ConnectionsExhausted,
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
    StreamEvent,
    Usage,
)

KEY = ApiKey("sk-proj-TESTKEY0123456789abcdefghijklmnop")
BASE = "https://api.openai.test/v1"


class Body(httpx.AsyncByteStream):
    """A response body that arrives in the given reads, optionally pausing before some."""

    def __init__(self, chunks: list[bytes], pauses: dict[int, float] | None = None) -> None:
        self.chunks = chunks
        self.pauses = pauses or {}
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for i, chunk in enumerate(self.chunks):
            if i in self.pauses:
                await asyncio.sleep(self.pauses[i])
            yield chunk

    async def aclose(self) -> None:
        self.closed = True


Reply = httpx.Response | Exception | Callable[[], Any]


class Upstream:
    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.replies: deque[Reply] = deque()

    def reply(
        self,
        status: int = 200,
        *,
        json_body: object = None,
        chunks: list[bytes] | None = None,
        pauses: dict[int, float] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Body:
        if chunks is None:
            chunks = [json.dumps(json_body).encode()]
        body = Body(chunks, pauses)
        self.replies.append(httpx.Response(status, headers=headers, stream=body))
        return body

    async def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        reply = self.replies.popleft()
        if isinstance(reply, Exception):
            raise reply
        if callable(reply):
            result = reply()
            return await result if asyncio.iscoroutine(result) else result  # type: ignore[no-any-return]
        return reply

    @property
    def sent(self) -> dict[str, Any]:
        return json.loads(self.requests[-1].content)  # type: ignore[no-any-return]


@pytest.fixture
def upstream() -> Upstream:
    return Upstream()


@pytest.fixture
async def provider(upstream: Upstream) -> AsyncIterator[OpenAIProvider]:
    async with httpx.AsyncClient(transport=httpx.MockTransport(upstream.handle)) as client:
        yield OpenAIProvider(client, base_url=BASE, stream_idle_timeout=0.2)


def request(**overrides: Any) -> InferenceRequest:
    fields: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "messages": (Message(Role.SYSTEM, "Be brief."), Message(Role.USER, "Say hello")),
    }
    fields.update(overrides)
    return InferenceRequest(**fields)


COMPLETION = {
    "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
    "object": "chat.completion",
    "created": 1741569952,
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Hello! How can I help?",
                "refusal": None,
                "annotations": [],
            },
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {
        "prompt_tokens": 19,
        "completion_tokens": 10,
        "total_tokens": 29,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
    },
    "service_tier": "default",
    "system_fingerprint": "fp_06737a9306",
}


def chunk(delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    choices = (
        []
        if delta is None
        else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
    )
    return {
        "id": "chatcmpl-123",
        "object": "chat.completion.chunk",
        "created": 1694268190,
        "model": "gpt-4o-mini-2024-07-18",
        "system_fingerprint": "fp_44709d6fcb",
        "choices": choices,
        "usage": None,
    } | extra  # fmt: skip


STREAM = [
    chunk({"role": "assistant", "content": "", "refusal": None}),
    chunk({"content": "Hel"}),
    chunk({"content": "lo"}),
    chunk({}, "stop"),
    chunk(None, usage={"prompt_tokens": 19, "completion_tokens": 2, "total_tokens": 21}),
]


def sse(*events: object, done: bool = True, eol: str = "\n") -> bytes:
    out = "".join(f"data: {json.dumps(e, separators=(',', ':'))}{eol}{eol}" for e in events)
    return (out + (f"data: [DONE]{eol}{eol}" if done else "")).encode()


async def collect(provider: OpenAIProvider, req: InferenceRequest | None = None) -> list[Any]:
    return [event async for event in provider.stream(req or request(), KEY)]


async def fails(provider: OpenAIProvider, *, stream: bool) -> ProviderFailure:
    call = collect(provider) if stream else provider.complete(request(), KEY)
    with pytest.raises(ProviderFailure) as caught:
        await call
    return caught.value


# --- what the adapter sends ---------------------------------------------------------------------


async def test_complete_sends_the_documented_request(
    provider: OpenAIProvider, upstream: Upstream
) -> None:
    upstream.reply(json_body=COMPLETION)
    await provider.complete(request(temperature=0.0, max_tokens=64), KEY)

    sent = upstream.requests[0]
    assert sent.method == "POST"
    assert str(sent.url) == f"{BASE}/chat/completions"
    assert sent.headers["authorization"] == f"Bearer {KEY.value}"
    assert KEY.value not in str(sent.url)
    assert upstream.sent == {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Say hello"},
        ],
        "temperature": 0.0,
        "max_tokens": 64,
    }


async def test_unset_temperature_and_max_tokens_are_omitted(
    provider: OpenAIProvider, upstream: Upstream
) -> None:
    upstream.reply(json_body=COMPLETION)
    await provider.complete(request(), KEY)
    assert "temperature" not in upstream.sent
    assert "max_tokens" not in upstream.sent


async def test_max_tokens_field_can_be_max_completion_tokens(upstream: Upstream) -> None:
    upstream.reply(json_body=COMPLETION)
    async with httpx.AsyncClient(transport=httpx.MockTransport(upstream.handle)) as client:
        provider = OpenAIProvider(client, max_tokens_field="max_completion_tokens")
        await provider.complete(request(max_tokens=5), KEY)
    assert upstream.sent["max_completion_tokens"] == 5
    assert "max_tokens" not in upstream.sent
    assert str(upstream.requests[0].url) == f"{DEFAULT_BASE_URL}/chat/completions"


async def test_stream_asks_for_the_usage_chunk(
    provider: OpenAIProvider, upstream: Upstream
) -> None:
    upstream.reply(chunks=[sse(*STREAM)])
    await collect(provider)
    assert upstream.sent["stream"] is True
    assert upstream.sent["stream_options"] == {"include_usage": True}


async def test_a_vllm_base_url_with_trailing_slash(upstream: Upstream) -> None:
    upstream.reply(json_body=COMPLETION)
    async with httpx.AsyncClient(transport=httpx.MockTransport(upstream.handle)) as client:
        await OpenAIProvider(client, base_url="http://vllm:8000/v1/").complete(request(), KEY)
    assert str(upstream.requests[0].url) == "http://vllm:8000/v1/chat/completions"


async def test_the_client_factory_is_bounded() -> None:
    async with http_client("http://vllm:8000/v1") as client:
        assert client.timeout.connect == 5.0
        assert client.base_url == httpx.URL("http://vllm:8000/v1/")
        assert "key" not in repr(OpenAIProvider(client)).lower()


# --- unary answers ------------------------------------------------------------------------------


async def test_complete_maps_the_answer(provider: OpenAIProvider, upstream: Upstream) -> None:
    upstream.reply(json_body=COMPLETION)
    assert await provider.complete(request(), KEY) == Completion(
        content="Hello! How can I help?",
        model="gpt-4o-mini-2024-07-18",
        provider="openai",
        finish_reason=FinishReason.STOP,
        usage=Usage(19, 10),
    )


@pytest.mark.parametrize(
    ("raw", "mapped"),
    [
        ("stop", FinishReason.STOP),
        ("length", FinishReason.LENGTH),
        ("content_filter", FinishReason.CONTENT_FILTER),
        ("tool_calls", FinishReason.OTHER),
        (None, FinishReason.OTHER),
    ],
)
async def test_finish_reasons(
    provider: OpenAIProvider, upstream: Upstream, raw: str | None, mapped: FinishReason
) -> None:
    answer = json.loads(json.dumps(COMPLETION))
    answer["choices"][0]["finish_reason"] = raw
    upstream.reply(json_body=answer)
    assert (await provider.complete(request(), KEY)).finish_reason is mapped


async def test_a_minimal_compatible_server_answer(
    provider: OpenAIProvider, upstream: Upstream
) -> None:
    upstream.reply(json_body={"choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}]})
    completion = await provider.complete(request(), KEY)
    assert (completion.content, completion.model, completion.usage) == (
        "hi",
        "gpt-4o-mini",
        Usage(),
    )


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"[]", b'{"choices": []}', b'{"choices": [{"message": {"content": 7}}]}'],
)
async def test_malformed_answers_are_faults(
    provider: OpenAIProvider, upstream: Upstream, body: bytes
) -> None:
    upstream.reply(chunks=[body])
    assert isinstance(await fails(provider, stream=False), UpstreamFault)


# --- streamed answers ---------------------------------------------------------------------------


async def test_stream_yields_deltas_then_one_end(
    provider: OpenAIProvider, upstream: Upstream
) -> None:
    upstream.reply(chunks=[sse(*STREAM)])
    assert await collect(provider) == [
        Delta("Hel"),
        Delta("lo"),
        StreamEnd("gpt-4o-mini-2024-07-18", FinishReason.STOP, Usage(19, 2)),
    ]


@pytest.mark.parametrize("size", [1, 3, 17, 64])
async def test_stream_survives_any_read_size(
    provider: OpenAIProvider, upstream: Upstream, size: int
) -> None:
    raw = sse(*STREAM, chunk({"content": " wörld €"}), eol="\r\n")
    upstream.reply(chunks=[raw[i : i + size] for i in range(0, len(raw), size)])
    events = await collect(provider)
    assert "".join(e.content for e in events if isinstance(e, Delta)) == "Hello wörld €"
    assert isinstance(events[-1], StreamEnd)


async def test_stream_ignores_comments_and_keep_alives(
    provider: OpenAIProvider, upstream: Upstream
) -> None:
    raw = b": keep-alive\n\n" + sse(*STREAM[:2], done=False) + b": ping\n\n" + sse(*STREAM[2:])
    upstream.reply(chunks=[raw])
    assert [e for e in await collect(provider) if isinstance(e, Delta)] == [
        Delta("Hel"),
        Delta("lo"),
    ]


async def test_stream_without_usage_from_a_compatible_server(
    provider: OpenAIProvider, upstream: Upstream
) -> None:
    upstream.reply(
        chunks=[sse({"choices": [{"delta": {"content": "hi"}, "finish_reason": "length"}]})]
    )
    assert await collect(provider) == [
        Delta("hi"),
        StreamEnd("gpt-4o-mini", FinishReason.LENGTH, Usage()),
    ]


@pytest.mark.parametrize(
    "raw",
    [
        sse(*STREAM, done=False),  # cut before [DONE]
        sse(*STREAM[:3], done=False),  # cut mid-answer
        sse(*STREAM[:3]),  # [DONE] without a finish_reason
        sse(*STREAM)[:-1],  # the [DONE] event never completed
        b"",
    ],
)
async def test_truncated_streams_are_faults(
    provider: OpenAIProvider, upstream: Upstream, raw: bytes
) -> None:
    upstream.reply(chunks=[raw])
    failure = await fails(provider, stream=True)
    assert isinstance(failure, UpstreamFault)
    assert "truncated" in str(failure)


@pytest.mark.parametrize(
    "raw",
    [
        b"data: {not json\n\n",
        b"data: [1, 2]\n\n",
        b"data: \xff\xfe\n\n",
        b'data: {"choices": 3}\n\n',
    ],
)
async def test_malformed_streams_are_faults(
    provider: OpenAIProvider, upstream: Upstream, raw: bytes
) -> None:
    upstream.reply(chunks=[raw])
    assert isinstance(await fails(provider, stream=True), UpstreamFault)


async def test_an_error_event_mid_stream(provider: OpenAIProvider, upstream: Upstream) -> None:
    error = {"error": {"message": f"server_error near {KEY.value}", "type": "server_error"}}
    upstream.reply(chunks=[sse(STREAM[1], error)])
    stream = provider.stream(request(), KEY)
    assert await anext(stream) == Delta("Hel")
    with pytest.raises(UpstreamFault) as caught:
        await anext(stream)
    assert KEY.value not in str(caught.value)


async def test_a_stalled_stream_is_a_fault(provider: OpenAIProvider, upstream: Upstream) -> None:
    body = upstream.reply(chunks=[sse(STREAM[1], done=False), sse(*STREAM[2:])], pauses={1: 5.0})
    stream = provider.stream(request(), KEY)
    assert await anext(stream) == Delta("Hel")
    with pytest.raises(UpstreamFault, match="stalled"):
        await asyncio.wait_for(anext(stream), timeout=2.0)
    assert body.closed


async def test_a_stall_before_the_headers_is_a_fault(
    provider: OpenAIProvider, upstream: Upstream
) -> None:
    async def never() -> httpx.Response:
        await asyncio.sleep(5.0)
        raise AssertionError("unreachable")

    upstream.replies.append(never)
    with pytest.raises(UpstreamFault, match="stalled"):
        await asyncio.wait_for(collect(provider), timeout=2.0)


# --- closing ------------------------------------------------------------------------------------


async def test_aclose_closes_the_response(provider: OpenAIProvider, upstream: Upstream) -> None:
    body = upstream.reply(chunks=[sse(*STREAM[:2], done=False), sse(*STREAM[2:])], pauses={1: 5.0})
    stream = provider.stream(request(), KEY)
    assert await anext(stream) == Delta("Hel")
    await stream.aclose()
    assert body.closed


async def test_cancelling_the_consumer_closes_the_response(upstream: Upstream) -> None:
    body = upstream.reply(chunks=[sse(*STREAM[:2], done=False), sse(*STREAM[2:])], pauses={1: 5.0})
    async with httpx.AsyncClient(transport=httpx.MockTransport(upstream.handle)) as client:
        stream = OpenAIProvider(client, base_url=BASE, stream_idle_timeout=30).stream(
            request(), KEY
        )
        assert await anext(stream) == Delta("Hel")
        task = asyncio.create_task(anext(stream))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert body.closed


async def test_the_response_is_closed_before_the_end_is_reported(
    provider: OpenAIProvider, upstream: Upstream
) -> None:
    body = upstream.reply(chunks=[sse(*STREAM)])
    events: list[StreamEvent] = []
    async for event in provider.stream(request(), KEY):
        events.append(event)
        if isinstance(event, StreamEnd):
            assert body.closed
            break
    assert isinstance(events[-1], StreamEnd)


# --- failures -----------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_429_with_rate_limit_headers(
    provider: OpenAIProvider, upstream: Upstream, stream: bool
) -> None:
    upstream.reply(
        429,
        json_body={
            "error": {
                "message": "Rate limit reached for gpt-4o-mini on requests per min (RPM)",
                "type": "requests",
                "param": None,
                "code": "rate_limit_exceeded",
            }
        },
        headers={
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": "1m0.5s",
            "x-ratelimit-remaining-tokens": "1999",
            "x-ratelimit-reset-tokens": "3ms",
        },
    )
    failure = await fails(provider, stream=stream)
    assert isinstance(failure, RateLimited)
    assert failure.retry_after == 60.5


async def test_429_with_retry_after_ms(provider: OpenAIProvider, upstream: Upstream) -> None:
    upstream.reply(429, json_body={}, headers={"retry-after-ms": "250", "retry-after": "1"})
    failure = await fails(provider, stream=False)
    assert isinstance(failure, RateLimited)
    assert failure.retry_after == 0.25


@pytest.mark.parametrize("stream", [False, True])
async def test_invalid_key_is_rejected_and_redacted(
    provider: OpenAIProvider, upstream: Upstream, stream: bool
) -> None:
    masked = KEY.value[:8] + "*" * 20 + KEY.value[-4:]
    upstream.reply(
        401,
        json_body={
            "error": {
                "message": f"Incorrect API key provided: {masked}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                "type": "invalid_request_error",
                "param": None,
                "code": "invalid_api_key",
            }
        },
    )
    failure = await fails(provider, stream=stream)
    assert isinstance(failure, KeyRejected)
    assert "sk-" not in str(failure)
    assert KEY.value[-4:] not in str(failure)
    assert KEY.fingerprint in str(failure)


@pytest.mark.parametrize("stream", [False, True])
async def test_a_4xx_echoing_the_key_is_rejected_redacted(
    provider: OpenAIProvider, upstream: Upstream, stream: bool
) -> None:
    upstream.reply(
        400,
        json_body={
            "error": {
                "message": f"Invalid 'messages': header was Bearer {KEY.value} and sk-other123",
                "type": "invalid_request_error",
                "param": "messages",
                "code": None,
            }
        },
    )
    failure = await fails(provider, stream=stream)
    assert isinstance(failure, UpstreamRejected)
    assert "Invalid 'messages'" in str(failure)
    assert KEY.value not in str(failure)
    assert "sk-" not in str(failure)


@pytest.mark.parametrize("stream", [False, True])
async def test_503_with_retry_after_is_a_fault(
    provider: OpenAIProvider, upstream: Upstream, stream: bool
) -> None:
    upstream.reply(
        503, chunks=[b"<html>upstream connect error</html>"], headers={"retry-after": "4"}
    )
    failure = await fails(provider, stream=stream)
    assert isinstance(failure, UpstreamFault)
    assert failure.retry_after == 4.0
    assert "<html>" not in str(failure)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    "error",
    [
        httpx.ConnectError("[Errno 111] Connection refused"),
        httpx.ReadTimeout("timed out"),
        httpx.RemoteProtocolError("peer closed connection"),
    ],
)
async def test_transport_errors_are_faults(
    provider: OpenAIProvider, upstream: Upstream, stream: bool, error: Exception
) -> None:
    upstream.replies.append(error)
    failure = await fails(provider, stream=stream)
    assert isinstance(failure, UpstreamFault)
    assert failure.breaker_failure


# --- bounded output: numbers, sizes, content types -----------------------------------------------


@pytest.mark.parametrize("tokens", [2**40, -1, 2**31])
async def test_out_of_range_token_counts_are_a_malformed_answer(
    provider: OpenAIProvider, upstream: Upstream, tokens: int
) -> None:
    upstream.reply(json_body=COMPLETION | {"usage": {"prompt_tokens": tokens}})
    failure = await fails(provider, stream=False)
    assert isinstance(failure, MalformedAnswer)
    assert "prompt_tokens is out of range" in str(failure)


async def test_out_of_range_token_counts_in_a_stream_are_a_malformed_answer(
    provider: OpenAIProvider, upstream: Upstream
) -> None:
    usage = {"prompt_tokens": 19, "completion_tokens": 2**40}
    upstream.reply(chunks=[sse(*STREAM[:-1], chunk(None, usage=usage))])
    assert isinstance(await fails(provider, stream=True), MalformedAnswer)


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("text/html", b"<html><body>Service temporarily unavailable</body></html>"),
        ("application/json", json.dumps(COMPLETION).encode()),
    ],
)
async def test_a_body_that_is_no_event_stream_is_malformed_not_truncated(
    provider: OpenAIProvider, upstream: Upstream, content_type: str, body: bytes
) -> None:
    upstream.reply(chunks=[body], headers={"content-type": content_type})
    failure = await fails(provider, stream=True)
    assert isinstance(failure, MalformedAnswer)
    assert f"unexpected content type '{content_type}'" in str(failure)
    assert "truncated" not in str(failure)


async def test_a_stream_longer_than_max_response_bytes_ends_with_an_error(
    upstream: Upstream,
) -> None:
    endless = [sse(chunk({"content": "x" * 100}), done=False)] * 50
    upstream.reply(chunks=endless, headers={"content-type": "text/event-stream"})
    async with httpx.AsyncClient(transport=httpx.MockTransport(upstream.handle)) as client:
        provider = OpenAIProvider(client, base_url=BASE, max_response_bytes=1000)
        received: list[Any] = []

        async def consume() -> None:
            async for event in provider.stream(request(), KEY):
                received.append(event)

        with pytest.raises(MalformedAnswer, match="MAX_RESPONSE_BYTES"):
            await consume()
    assert 0 < len(received) < 10
    assert not any(isinstance(e, StreamEnd) for e in received)


async def test_a_unary_answer_longer_than_max_response_bytes_is_malformed(
    upstream: Upstream,
) -> None:
    upstream.reply(json_body=COMPLETION)
    async with httpx.AsyncClient(transport=httpx.MockTransport(upstream.handle)) as client:
        provider = OpenAIProvider(client, base_url=BASE, max_response_bytes=100)
        with pytest.raises(MalformedAnswer, match="larger than 100 bytes"):
            await provider.complete(request(), KEY)


async def test_the_proxys_own_full_pool_is_not_the_providers_fault(
    provider: OpenAIProvider, upstream: Upstream
) -> None:
    upstream.replies.append(httpx.PoolTimeout("no connection available"))
    failure = await fails(provider, stream=False)
    assert isinstance(failure, ConnectionsExhausted)
    assert "UPSTREAM_MAX_CONNECTIONS" in str(failure)
    assert failure.retry_after is not None


async def test_the_model_list_is_read_with_its_dates(
    provider: OpenAIProvider, upstream: Upstream
) -> None:
    upstream.reply(
        json_body={"object": "list", "data": [{"id": "gpt-4o", "created": 1715367049}, {"x": 1}]}
    )
    models = await provider.models(KEY)
    assert [(m.id, m.created) for m in models] == [("gpt-4o", 1715367049)]
    sent = upstream.requests[-1]
    assert sent.method == "GET"
    assert sent.url.path.endswith("/models")


async def test_a_model_list_without_data_is_malformed(
    provider: OpenAIProvider, upstream: Upstream
) -> None:
    upstream.reply(json_body={"error": "nope"})
    with pytest.raises(MalformedAnswer):
        await provider.models(KEY)


async def test_embeddings_come_back_in_input_order_as_sent(
    provider: OpenAIProvider, upstream: Upstream
) -> None:
    upstream.reply(
        json_body={
            "data": [{"index": 1, "embedding": [0.0, 2.0]}, {"index": 0, "embedding": [3, 4]}],
            "model": "text-embedding-3-small",
            "usage": {"prompt_tokens": 4, "total_tokens": 4},
        }
    )
    request = EmbeddingRequest("text-embedding-3-small", ("a", "b"), dimensions=2)
    embedded = await provider.embed(request, KEY)
    assert embedded.vectors == ((3.0, 4.0), (0.0, 2.0))  # not rescaled: passed on as sent
    assert embedded.input_tokens == 4
    assert upstream.sent == {
        "model": "text-embedding-3-small", "input": ["a", "b"], "encoding_format": "float",
        "dimensions": 2,
    }  # fmt: skip


@pytest.mark.parametrize(
    "data",
    [
        [{"index": 0, "embedding": [1.0]}],
        [{"index": 0, "embedding": [1.0]}, {"index": 0, "embedding": [2.0]}],
        [{"index": 0, "embedding": [1.0]}, {"index": 1, "embedding": [1.0, 2.0]}],
        [{"index": 0, "embedding": ["x"]}, {"index": 1, "embedding": [1.0]}],
    ],
)
async def test_malformed_embeddings_are_a_malformed_answer(
    provider: OpenAIProvider, upstream: Upstream, data: list[object]
) -> None:
    upstream.reply(json_body={"data": data})
    with pytest.raises(MalformedAnswer):
        await provider.embed(EmbeddingRequest("text-embedding-3-small", ("a", "b")), KEY)
