"""Real gRPC -> proxy -> real HTTP -> the upstream simulator, for both providers."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc
import pytest

from adapters.inbound.grpc.generated import proxy_pb2 as pb
from domain.key_pool import ApiKey
from simulator import SimulatorConfig, key_fingerprint
from tests.harness import GEMINI_KEYS, OPENAI_KEYS, stack

CHAT = "openai.chat"


def ask(model: str, prompt: str = "Explain goroutines.", **kw: Any) -> pb.InferenceRequest:
    return pb.InferenceRequest(model=model, prompt=prompt, **kw)


async def failure(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


@pytest.mark.parametrize("model", ["gpt-4o-mini", "gemini-2.0-flash"])
async def test_unary_answer_with_usage(model: str) -> None:
    async with stack() as s:
        response = await s.stub.Infer(ask(model, temperature=0.2, max_tokens=200))
        again = await s.stub.Infer(ask(model, temperature=0.2, max_tokens=200))
    assert response.content.startswith("sim-")
    assert response.content == again.content  # the simulator is deterministic
    assert response.provider == model.split("-")[0].replace("gpt", "openai")
    assert response.finish_reason == pb.FINISH_REASON_STOP
    assert response.usage.input_tokens > 0
    assert response.usage.output_tokens > 0


@pytest.mark.parametrize("model", ["gpt-4o-mini", "gemini-2.0-flash"])
async def test_streamed_answer_with_usage(model: str) -> None:
    async with stack() as s:
        chunks = [c async for c in s.stub.InferStream(ask(model))]
        unary = await s.stub.Infer(ask(model))
    *deltas, last = chunks
    assert len(deltas) > 1
    assert "".join(d.content for d in deltas) == unary.content
    assert last.done
    assert last.finish_reason == pb.FINISH_REASON_STOP
    assert last.usage.output_tokens == unary.usage.output_tokens


async def test_max_tokens_cuts_the_answer_and_says_length() -> None:
    async with stack() as s:
        response = await s.stub.Infer(ask("gemini-2.0-flash", max_tokens=3))
    assert response.finish_reason == pb.FINISH_REASON_LENGTH
    assert response.usage.output_tokens == 3


async def test_429_on_one_key_is_answered_by_the_next_key() -> None:
    limited = SimulatorConfig(rate_limited_keys={OPENAI_KEYS[0]}, retry_after_s=60)
    async with stack(limited) as s:
        response = await s.stub.Infer(ask("gpt-4o-mini"))
        followup = await s.stub.Infer(ask("gpt-4o-mini", "another"))
        by_key = s.sim.stats.by_key
    assert response.content.startswith("sim-")
    assert followup.content.startswith("sim-")
    assert by_key[key_fingerprint(OPENAI_KEYS[0])] == 1  # rested after its 429
    assert by_key[key_fingerprint(OPENAI_KEYS[1])] == 2


@pytest.mark.parametrize("model", ["gpt-4o-mini", "gemini-2.0-flash"])
async def test_every_key_limited_is_resource_exhausted_with_the_earliest_reset(
    model: str,
) -> None:
    limited = SimulatorConfig(rate_limited_keys={*OPENAI_KEYS, *GEMINI_KEYS}, retry_after_s=90)
    async with stack(limited) as s:
        error = await failure(s.stub.Infer(ask(model)))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    retry_after_ms = int(dict(error.trailing_metadata() or ())["retry-after-ms"])
    assert 85_000 <= retry_after_ms <= 90_000
    assert "retry after" in (error.details() or "")


async def test_repeated_5xx_open_the_breaker() -> None:
    async with stack(SimulatorConfig(faults="503"), cb_failure_threshold=3, max_retries=2) as s:
        first = await failure(s.stub.Infer(ask("gpt-4o-mini")))
        second = await failure(s.stub.Infer(ask("gpt-4o-mini", "again")))
        attempts = s.sim.stats.by_endpoint[CHAT]
    assert first.code() == grpc.StatusCode.UNAVAILABLE
    assert "3 attempts" in (first.details() or "")
    assert second.code() == grpc.StatusCode.UNAVAILABLE
    assert "circuit breaker is open" in (second.details() or "")
    assert attempts == 3  # the breaker opened after the third failure; the second call failed fast


async def test_a_stalled_stream_ends_with_an_error_status() -> None:
    async with stack(openai_stream_idle_timeout="300ms") as s:
        received: list[str] = []

        async def consume() -> None:
            async for chunk in s.stub.InferStream(ask("gpt-4o-mini", "tell me [[sim:stall:2]]")):
                received.append(chunk.content)

        error = await failure(consume())
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "stall" in (error.details() or "").lower() or "idle" in (error.details() or "").lower()
    assert len(received) == 2  # the content before the stall reached the client, then the error


async def test_a_truncated_stream_is_an_error_not_a_short_answer() -> None:
    async with stack() as s:

        async def consume() -> list[pb.StreamChunk]:
            return [c async for c in s.stub.InferStream(ask("gpt-4o-mini", "x [[sim:truncate:3]]"))]

        error = await failure(consume())
    assert error.code() == grpc.StatusCode.UNAVAILABLE


async def test_client_cancel_closes_the_upstream_request() -> None:
    async with stack(SimulatorConfig(unary_latency_s=5.0)) as s:
        call = s.stub.Infer(ask("gpt-4o-mini"))
        assert await s.sim.stats.wait_until(lambda st: st.in_flight == 1, within_s=5)
        call.cancel()
        closed = await s.sim.stats.wait_until(lambda st: st.client_disconnects == 1, within_s=5)
    assert closed


async def test_client_cancel_of_a_stream_closes_the_upstream_stream() -> None:
    async with stack(SimulatorConfig(chunk_delay_s=0.2, answer_words=50)) as s:
        call = s.stub.InferStream(ask("gemini-2.0-flash"))
        await call.read()
        call.cancel()
        closed = await s.sim.stats.wait_until(lambda st: st.client_disconnects == 1, within_s=5)
        assert closed
        assert s.sim.stats.in_flight == 0


async def test_an_invalid_key_is_disabled_and_reported_by_fingerprint_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    bad, good = OPENAI_KEYS
    async with stack(SimulatorConfig(invalid_keys={bad})) as s:
        for i in range(3):
            response = await s.stub.Infer(ask("gpt-4o-mini", f"question {i}"))
            assert response.content.startswith("sim-")
        by_key = dict(s.sim.stats.by_key)
    assert by_key[key_fingerprint(bad)] == 1  # never used again after its 401
    assert by_key[key_fingerprint(good)] == 3
    assert ApiKey(bad).fingerprint in caplog.text
    assert bad not in caplog.text
    assert good not in caplog.text


async def test_upstream_400_is_invalid_argument_without_key_material() -> None:
    async with stack() as s:
        error = await failure(s.stub.Infer(ask("gpt-4o-mini", "hi [[sim:400]]")))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "sk-" not in (error.details() or "")


async def test_5xx_then_success_is_retried_transparently() -> None:
    async with stack() as s:
        response = await s.stub.Infer(ask("gemini-2.0-flash", "hello [[sim:503*2]]"))
        attempts = s.sim.stats.by_endpoint
    assert response.content.startswith("sim-")
    assert sum(attempts.values()) == 3


async def test_connection_reset_is_retried() -> None:
    async with stack() as s:
        response = await s.stub.Infer(ask("gpt-4o-mini", "hello [[sim:reset*1]]"))
    assert response.content.startswith("sim-")
    await asyncio.sleep(0)
