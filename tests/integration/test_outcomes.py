"""Requests are counted by what happened to them, over a real gRPC server."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from adapters.inbound.grpc.generated import proxy_pb2 as pb
from tests.fakes import Hang
from tests.integration.conftest import Proxy, running_proxy

pytestmark = pytest.mark.integration


def requests_by_status(proxy: Proxy) -> dict[str, float]:
    registry = proxy.container.metrics().registry
    return {
        sample.labels["status"]: sample.value
        for family in registry.collect()
        if family.name == "requests"
        for sample in family.samples
        if sample.name == "requests_total"
    }


@pytest.mark.parametrize("rpc", ["Infer", "InferStream"])
async def test_a_client_deadline_is_counted_as_deadline_exceeded(rpc: str) -> None:
    async with running_proxy() as proxy:
        proxy.openai.then(*[Hang()] * 3)
        for _ in range(3):
            call = getattr(proxy.stub, rpc)(
                pb.InferenceRequest(model="gpt-4", prompt="hi"), timeout=0.2
            )
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call if rpc == "Infer" else [c async for c in call]
            assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        for _ in range(200):  # the server records after the client has its status
            counts = requests_by_status(proxy)
            if sum(counts.values()) >= 3:
                break
            await asyncio.sleep(0.01)
    assert counts.get("deadline_exceeded") == 3
    assert counts.get("cancelled", 0) == 0
