"""No upstream connection outlives its call: timed-out and cancelled calls against a silent
upstream free their pool slots, so a healthy call still gets through afterwards."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from adapters.inbound.grpc.generated import proxy_pb2 as pb
from simulator import SimulatorConfig
from tests.harness import stack

POOL = 3
SILENT = SimulatorConfig(stall_timeout_s=60)
# Timeouts on a silent provider open its breaker; these tests are about the pool, not the breaker.
PATIENT = {"cb_failure_threshold": 100}


def ask(prompt: str) -> pb.InferenceRequest:
    return pb.InferenceRequest(model="gpt-4o-mini", prompt=prompt)


async def test_timed_out_unary_calls_leave_the_pool_free() -> None:
    async with stack(
        SILENT, upstream_max_connections=POOL, **PATIENT, request_timeout="400ms"
    ) as s:
        for i in range(POOL + 1):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await s.stub.Infer(ask(f"silent {i} [[sim:stall]]"))
            assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        response = await s.stub.Infer(ask("healthy"), timeout=5)
        assert await s.sim.stats.wait_until(lambda st: st.in_flight == 0, within_s=3)
    assert response.content.startswith("sim-")


async def test_client_deadlines_on_unary_calls_leave_the_pool_free() -> None:
    async with stack(SILENT, upstream_max_connections=POOL, **PATIENT) as s:
        for i in range(POOL + 1):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await s.stub.Infer(ask(f"silent {i} [[sim:stall]]"), timeout=0.4)
            assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        response = await s.stub.Infer(ask("healthy"), timeout=5)
    assert response.content.startswith("sim-")


@pytest.mark.parametrize("client_deadline", [None, 0.4])
async def test_timed_out_streams_leave_the_pool_free(client_deadline: float | None) -> None:
    async with stack(
        SILENT, upstream_max_connections=POOL, **PATIENT, request_timeout="400ms"
    ) as s:
        for i in range(POOL + 1):
            call = s.stub.InferStream(ask(f"s{i} [[sim:stall:2]]"), timeout=client_deadline)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                _ = [c async for c in call]
            assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        chunks = [c async for c in s.stub.InferStream(ask("healthy"), timeout=5)]
    assert chunks[-1].done


async def test_many_concurrent_timeouts_leave_the_pool_free() -> None:
    async with stack(
        SILENT, upstream_max_connections=POOL, **PATIENT, request_timeout="400ms"
    ) as s:
        calls = [s.stub.Infer(ask(f"silent {i} [[sim:stall]]")) for i in range(3 * POOL)]
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        response = await s.stub.Infer(ask("healthy"), timeout=5)
    assert all(isinstance(o, grpc.aio.AioRpcError) for o in outcomes)
    assert response.content.startswith("sim-")
