from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from adapters.inbound.grpc.generated import proxy_pb2_grpc as pb_grpc
from container import Container
from tests import harness
from tests.fakes import FakeProvider


@dataclass
class Proxy:
    stub: pb_grpc.InferenceServiceStub
    channel: grpc.aio.Channel
    container: Container
    openai: FakeProvider
    gemini: FakeProvider
    port: int
    metrics_port: int
    http_port: int = 0


@asynccontextmanager
async def running_proxy(**settings: Any) -> AsyncIterator[Proxy]:
    """The real server from the container, with fake providers swapped in."""
    openai, gemini = FakeProvider("openai"), FakeProvider("gemini")
    async with harness.running_proxy({"openai": openai, "gemini": gemini}, **settings) as p:
        yield Proxy(
            p.stub, p.channel, p.container, openai, gemini, p.port, p.metrics_port, p.http_port
        )


@pytest.fixture
async def proxy() -> AsyncIterator[Proxy]:
    async with running_proxy() as p:
        yield p
