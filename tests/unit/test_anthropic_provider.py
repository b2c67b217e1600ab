"""Contract tests: the Anthropic adapter against an in-process upstream serving the Messages
API's documented shapes (unary, SSE events, errors, rate-limit headers)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from adapters.outbound.providers.anthropic import AnthropicProvider
from adapters.outbound.providers.errors import anthropic_ratelimit_reset
from domain.errors import (
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

KEY = ApiKey("sk-ant-api03-TESTKEY0123456789abcdefghijkl")
BASE = "https://api.anthropic.test"
NOW = datetime(2026, 1, 1, tzinfo=UTC)

MESSAGE = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5-20250929",
    "content": [{"type": "thinking", "thinking": "hmm"}, {"type": "text", "text": "Hello!"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 12, "output_tokens": 3},
}


@pytest.fixture
def upstream() -> Upstream:
    return Upstream()


@pytest.fixture
async def provider(upstream: Upstream) -> AsyncIterator[AnthropicProvider]:
    async with httpx.AsyncClient(transport=httpx.MockTransport(upstream.handle)) as client:
        yield AnthropicProvider(
            client, base_url=BASE, default_max_tokens=1000, stream_idle_timeout=0.2,
            now=lambda: NOW,
        )  # fmt: skip


def request(**overrides: Any) -> InferenceRequest:
    fields: dict[str, Any] = {
        "model": "claude-sonnet-4-5",
        "messages": (
            Message(Role.SYSTEM, "Be brief."),
            Message(Role.USER, "Hi"),
            Message(Role.USER, "there"),
            Message(Role.ASSISTANT, "Hello!"),
            Message(Role.USER, "Again"),
            Message(Role.SYSTEM, "In French."),
        ),
    }
    fields.update(overrides)
    return InferenceRequest(**fields)


def events(*payloads: dict[str, Any]) -> bytes:
    return "".join(f"event: {p['type']}\ndata: {json.dumps(p)}\n\n" for p in payloads).encode()


def stream_of(*texts: str, stop: str | None = "end_turn", end: bool = True) -> bytes:
    start = {"type": "message_start", "message": {**MESSAGE, "content": [], "stop_reason": None,
             "usage": {"input_tokens": 12, "output_tokens": 1}}}  # fmt: skip
    parts: list[dict[str, Any]] = [
        start,
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "ping"},
    ]
    parts += [
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}}
        for t in texts
    ]
    parts.append({"type": "content_block_stop", "index": 0})
    if stop is not None:
        parts.append(
            {"type": "message_delta", "delta": {"stop_reason": stop}, "usage": {"output_tokens": 7}}
        )
    if end:
        parts.append({"type": "message_stop"})
    return events(*parts)


async def collect(provider: AnthropicProvider, req: InferenceRequest | None = None) -> list[Any]:
    return [event async for event in provider.stream(req or request(), KEY)]


def reply_stream(upstream: Upstream, body: bytes) -> None:
    upstream.reply(chunks=[body], headers={"content-type": "text/event-stream"})


async def test_complete_sends_the_messages_api_request(
    provider: AnthropicProvider, upstream: Upstream
) -> None:
    upstream.reply(json_body=MESSAGE)
    completion = await provider.complete(request(temperature=0.0), KEY)
    sent = upstream.requests[-1]
    assert sent.url == f"{BASE}/v1/messages"
    assert sent.headers["x-api-key"] == KEY.value
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert upstream.sent == {
        "model": "claude-sonnet-4-5",
        "max_tokens": 1000,  # required by Anthropic: the default when the request has none
        "system": "Be brief.\n\nIn French.",
        "messages": [
            {"role": "user", "content": "Hi\n\nthere"},  # one role's turns merged
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Again"},
        ],
        "temperature": 0.0,
    }
    assert completion == Completion(
        "Hello!", "claude-sonnet-4-5-20250929", "anthropic", FinishReason.STOP, Usage(12, 3)
    )


async def test_a_prefill_is_sent_as_the_last_assistant_turn_without_trailing_space(
    provider: AnthropicProvider, upstream: Upstream
) -> None:
    upstream.reply(json_body=MESSAGE | {"stop_reason": "max_tokens"})
    prefill = (Message(Role.USER, "Name a colour."), Message(Role.ASSISTANT, "The colour is "))
    completion = await provider.complete(request(messages=prefill, max_tokens=5), KEY)
    assert upstream.sent["messages"][-1] == {"role": "assistant", "content": "The colour is"}
    assert upstream.sent["max_tokens"] == 5
    assert completion.finish_reason is FinishReason.LENGTH


async def test_a_temperature_above_one_is_refused_naming_it(
    provider: AnthropicProvider, upstream: Upstream
) -> None:
    with pytest.raises(UpstreamRejected, match=r"\[0, 1\]") as caught:
        await provider.complete(request(temperature=1.5), KEY)
    assert caught.value.param == "temperature"
    assert not upstream.requests


async def test_a_stream_yields_text_deltas_then_the_end(
    provider: AnthropicProvider, upstream: Upstream
) -> None:
    reply_stream(upstream, stream_of("Bon", "jour"))
    assert await collect(provider) == [
        Delta("Bon"),
        Delta("jour"),
        StreamEnd("claude-sonnet-4-5-20250929", FinishReason.STOP, Usage(12, 7)),
    ]
    assert upstream.sent["stream"] is True


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (stream_of("Bon", end=False), "before message_stop"),
        (stream_of("Bon", stop=None), "without a stop_reason"),
    ],
)
async def test_a_truncated_stream_is_an_upstream_fault(
    provider: AnthropicProvider, upstream: Upstream, body: bytes, says: str
) -> None:
    reply_stream(upstream, body)
    with pytest.raises(UpstreamFault, match=says):
        await collect(provider)


@pytest.mark.parametrize(
    ("kind", "failure"),
    [("overloaded_error", UpstreamFault), ("rate_limit_error", RateLimited),
     ("invalid_request_error", UpstreamRejected)],
)  # fmt: skip
async def test_an_error_event_is_classified_by_its_type(
    provider: AnthropicProvider, upstream: Upstream, kind: str, failure: type[ProviderFailure]
) -> None:
    error = {"type": "error", "error": {"type": kind, "message": "Overloaded"}}
    reply_stream(upstream, stream_of("Bon", end=False, stop=None) + events(error))
    with pytest.raises(failure):
        await collect(provider)


async def test_overloaded_529_is_a_provider_fault(
    provider: AnthropicProvider, upstream: Upstream
) -> None:
    body = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    upstream.reply(529, json_body=body)
    with pytest.raises(UpstreamFault) as caught:
        await provider.complete(request(), KEY)
    assert caught.value.breaker_failure
    assert "529 Overloaded" in str(caught.value)


async def test_a_429_cools_the_key_until_the_exhausted_limits_reset(
    provider: AnthropicProvider, upstream: Upstream
) -> None:
    reset = (NOW + timedelta(seconds=42)).strftime("%Y-%m-%dT%H:%M:%SZ")
    headers = {
        "anthropic-ratelimit-requests-remaining": "0",
        "anthropic-ratelimit-requests-reset": reset,
        "anthropic-ratelimit-tokens-remaining": "900",
        "anthropic-ratelimit-tokens-reset": (NOW + timedelta(seconds=3)).isoformat(),
    }
    body = {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}
    upstream.reply(429, json_body=body, headers=headers)
    with pytest.raises(RateLimited) as caught:
        await provider.complete(request(), KEY)
    assert caught.value.retry_after == 42
    assert KEY.value not in str(caught.value)


def test_an_unreadable_or_missing_reset_is_no_wait() -> None:
    headers = {"anthropic-ratelimit-requests-reset": "not a time"}
    assert anthropic_ratelimit_reset(headers, NOW) is None
    assert anthropic_ratelimit_reset({}, NOW) is None


async def test_a_body_that_is_no_message_is_malformed(
    provider: AnthropicProvider, upstream: Upstream
) -> None:
    upstream.reply(json_body={"type": "completion"})
    with pytest.raises(MalformedAnswer):
        await provider.complete(request(), KEY)


async def test_models_and_no_embeddings(provider: AnthropicProvider, upstream: Upstream) -> None:
    upstream.reply(
        json_body={"data": [{"type": "model", "id": "claude-sonnet-4-5",
                             "created_at": "2025-09-29T00:00:00Z"}], "has_more": False}
    )  # fmt: skip
    [model] = await provider.models(KEY)
    assert (model.id, model.created) == ("claude-sonnet-4-5", 1759104000)
    assert upstream.requests[-1].headers["x-api-key"] == KEY.value
    with pytest.raises(UpstreamRejected, match="no embeddings"):
        await provider.embed(EmbeddingRequest("claude-sonnet-4-5", ("x",)), KEY)
