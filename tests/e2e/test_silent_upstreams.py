"""A silent provider through real gRPC and the simulator: whose timeout it is decides whether
the provider failed."""

from __future__ import annotations

import time

import grpc
import pytest

from adapters.inbound.grpc.generated import proxy_pb2 as pb
from simulator import SimulatorConfig
from tests.harness import scrape, stack

SILENT = SimulatorConfig(stall_timeout_s=60)


def ask(prompt: str) -> pb.InferenceRequest:
    return pb.InferenceRequest(model="gpt-4o-mini", prompt=prompt)


async def code_of(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value.code()


async def test_a_hanging_provider_opens_the_breaker() -> None:
    async with stack(
        SILENT, request_timeout="300ms", cb_failure_threshold=2, cb_cooldown="30s"
    ) as s:
        for i in range(2):
            assert await code_of(s.stub.Infer(ask(f"{i} [[sim:stall]]"))) is (
                grpc.StatusCode.DEADLINE_EXCEEDED
            )
        started = time.monotonic()
        assert await code_of(s.stub.Infer(ask("[[sim:stall]]"))) is grpc.StatusCode.UNAVAILABLE
        fast = time.monotonic() - started
        samples = await scrape(s)
    assert fast < 0.3  # rejected by the open breaker, not timed out
    assert samples["upstream_attempts_total", (("outcome", "timeout"), ("provider", "openai"))] == 2


async def test_a_shorter_client_deadline_never_opens_the_breaker() -> None:
    async with stack(SILENT, cb_failure_threshold=2) as s:
        for i in range(3):
            call = s.stub.Infer(ask(f"{i} [[sim:stall]]"), timeout=0.3)
            assert await code_of(call) is grpc.StatusCode.DEADLINE_EXCEEDED
        response = await s.stub.Infer(ask("healthy"), timeout=5)
    assert response.content.startswith("sim-")


async def test_upstream_timeout_retries_a_silent_attempt_within_the_deadline() -> None:
    # 1 s, not less: under load a healthy retry's first byte can take a few hundred ms
    async with stack(SILENT, upstream_timeout="1s", request_timeout="5s") as s:
        response = await s.stub.Infer(ask("once silent [[sim:stall*1]]"))
        samples = await scrape(s)
    assert response.content.startswith("sim-")
    attempts = ("upstream_attempts_total", (("outcome", "upstream_fault"), ("provider", "openai")))
    assert samples[attempts] == 1
