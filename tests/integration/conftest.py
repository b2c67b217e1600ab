from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from dependency_injector import providers

from adapters.grpc.generated import proxy_pb2_grpc as pb_grpc
from adapters.settings import load_settings
from container import Container
from tests.fakes import FakeProvider

FAST = {
    "grpc_host": "127.0.0.1",
    "grpc_port": 0,
    "openai_api_keys": "sk-test-one,sk-test-two",
    "gemini_api_keys": "AIza-test-one",
    "retry_wait_initial": "10ms",
    "retry_wait_max": "50ms",
    "cb_cooldown": "300ms",
    "shutdown_grace": "2s",
}


@dataclass
class Proxy:
    stub: pb_grpc.InferenceServiceStub
    channel: grpc.aio.Channel
    container: Container
    openai: FakeProvider
    gemini: FakeProvider
    port: int


@asynccontextmanager
async def running_proxy(**settings: Any) -> AsyncIterator[Proxy]:
    """The real server from the container, with fake providers swapped in."""
    container = Container(settings=load_settings(**{**FAST, **settings}))
    openai, gemini = FakeProvider("openai"), FakeProvider("gemini")
    container.provider_adapters.override(providers.Object({"openai": openai, "gemini": gemini}))
    server = container.grpc_server()
    port = await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Proxy(pb_grpc.InferenceServiceStub(channel), channel, container, openai, gemini, port)
    finally:
        await channel.close()
        await server.stop(0)


ProxyFactory = Callable[..., Any]


@pytest.fixture
async def proxy() -> AsyncIterator[Proxy]:
    async with running_proxy() as p:
        yield p
