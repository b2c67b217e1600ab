"""The Anthropic provider end to end: gRPC (the predecessor's grpcurl example with
claude-sonnet-4-5), the OpenAI-compatible HTTP API through the official SDK, faults from the
simulator's Messages API, and fallbacks across all three providers."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import openai
import pytest

from adapters.inbound.grpc.generated import proxy_pb2 as pb
from tests.harness import Stack, scrape, stack
from tests.integration.test_grpc_api import GRPCURL, _grpcurl

pytestmark = pytest.mark.integration

CLAUDE = "claude-sonnet-4-5"


@pytest.fixture
async def s() -> AsyncIterator[Stack]:
    async with stack(http=True, max_retries=1) as running:
        yield running


def sdk(s: Stack) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=s.proxy.http_url, api_key="unused", max_retries=0)


def user(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


@pytest.mark.skipif(GRPCURL is None, reason="grpcurl is not installed (make setup installs it)")
async def test_the_predecessors_grpcurl_examples_work_with_claude(s: Stack) -> None:
    address = f"127.0.0.1:{s.proxy.port}"
    body = {"model": CLAUDE, "prompt": "Explain goroutines in one paragraph.",
            "temperature": 0.7, "max_tokens": 256}  # fmt: skip
    for rpc in ("Infer", "InferStream"):
        code, out, err = await _grpcurl(
            "-plaintext", "-d", json.dumps(body), address, f"inferenceproxy.InferenceService/{rpc}"
        )
        assert code == 0, err
        last = json.loads("[" + out.replace("}\n{", "},{") + "]")[-1]
        assert last["provider"] == "anthropic"
        assert last["finish_reason"] == "FINISH_REASON_STOP"
        assert last["usage"]["output_tokens"] > 0
    assert s.sim.stats.by_endpoint["anthropic.messages"] == 1
    assert s.sim.stats.by_endpoint["anthropic.messages.stream"] == 1


async def test_a_grpc_stream_from_claude_carries_content_then_the_last_chunk(s: Stack) -> None:
    request = pb.InferenceRequest(
        model=CLAUDE,
        messages=[
            pb.Message(role=pb.ROLE_SYSTEM, content="Be brief."),
            pb.Message(role=pb.ROLE_USER, content="Explain channels."),
        ],
    )
    unary = await s.stub.Infer(request)
    chunks = [c async for c in s.stub.InferStream(request)]
    assert "".join(c.content for c in chunks) == unary.content
    assert chunks[-1].done
    assert chunks[-1].usage.input_tokens == unary.usage.input_tokens > 0


async def test_the_openai_sdk_talks_to_claude_unary_and_streamed(s: Stack) -> None:
    answer = await sdk(s).chat.completions.create(model=CLAUDE, messages=user("Hi."))
    assert answer.choices[0].message.content
    assert answer.choices[0].finish_reason == "stop"
    stream = await sdk(s).chat.completions.create(
        model=CLAUDE, messages=user("Hi."), stream=True, stream_options={"include_usage": True}
    )
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == answer.choices[0].message.content
    assert chunks[-1].usage == answer.usage


async def test_a_prefill_reaches_claude(s: Stack) -> None:
    answer = await sdk(s).chat.completions.create(
        model=CLAUDE,
        messages=[*user("Name a colour."), {"role": "assistant", "content": "The colour is "}],
    )
    assert answer.choices[0].message.content


async def test_overloaded_is_retried_as_a_provider_fault(s: Stack) -> None:
    answer = await sdk(s).chat.completions.create(model=CLAUDE, messages=user("Busy [[sim:529*1]]"))
    assert answer.choices[0].message.content
    samples = await scrape(s)
    labels = (("outcome", "upstream_fault"), ("provider", "anthropic"))
    assert samples[("upstream_attempts_total", labels)] == 1


async def test_a_rate_limited_key_cools_down_and_both_limited_is_a_429(s: Stack) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        await sdk(s).chat.completions.create(model=CLAUDE, messages=user("Slow [[sim:429:40]]"))
    assert 35 <= int(caught.value.response.headers["retry-after"]) <= 41
    keys = s.sim.stats.by_key_endpoint
    assert len([k for k, endpoints in keys.items() if endpoints["anthropic.messages"]]) == 2


async def test_a_failure_mid_stream_ends_the_stream_with_an_error(s: Stack) -> None:
    stream = s.stub.InferStream(pb.InferenceRequest(model=CLAUDE, prompt="Go [[sim:midstream:2]]"))
    chunks: list[pb.StreamChunk] = []

    async def read() -> None:
        async for chunk in stream:
            chunks.append(chunk)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await read()
    assert chunks
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize(
    ("chain", "prompt", "answered_by"),
    [
        ("gpt-4o=claude-sonnet-4-5|gemini-2.0-flash", "Down [[sim:503@openai]]", "anthropic"),
        ("claude-sonnet-4-5=gpt-4o-mini|gemini-2.0-flash", "Down [[sim:529@anthropic]]", "openai"),
        (
            "claude-sonnet-4-5=gpt-4o-mini|gemini-2.0-flash",
            "Down [[sim:529@anthropic]] [[sim:503@openai]]",
            "gemini",
        ),
    ],
)
async def test_fallbacks_cross_all_three_providers(
    chain: str, prompt: str, answered_by: str
) -> None:
    async with stack(model_fallbacks=chain, max_retries=0) as s:
        model = chain.partition("=")[0]
        answer = await s.stub.Infer(pb.InferenceRequest(model=model, prompt=prompt))
    assert answer.provider == answered_by
    assert answer.fallback_from == model
