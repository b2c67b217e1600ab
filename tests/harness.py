"""A proxy on loopback built by the real container, for integration and end-to-end tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
from dependency_injector import providers

from adapters.grpc.generated import proxy_pb2_grpc as pb_grpc
from adapters.settings import load_settings
from application.ports import Provider
from container import Container

FAST = {
    "grpc_host": "127.0.0.1",
    "grpc_port": 0,
    "metrics_port": 0,
    "openai_api_keys": "sk-test-one,sk-test-two",
    "gemini_api_keys": "AIza-test-one",
    "retry_wait_initial": "10ms",
    "retry_wait_max": "50ms",
    "cb_cooldown": "300ms",
    "shutdown_grace": "2s",
    "cache_mode": "off",
}


@dataclass
class RunningProxy:
    stub: pb_grpc.InferenceServiceStub
    channel: grpc.aio.Channel
    container: Container
    port: int


@asynccontextmanager
async def running_proxy(
    adapters: Mapping[str, Provider] | None = None, **settings: Any
) -> AsyncIterator[RunningProxy]:
    """The real server from the container; `adapters` (fakes) replace the real providers."""
    container = Container(settings=load_settings(**{**FAST, **settings}))
    if adapters is not None:
        container.provider_adapters.override(providers.Object(dict(adapters)))
    server = container.grpc_server()
    port = await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield RunningProxy(pb_grpc.InferenceServiceStub(channel), channel, container, port)
    finally:
        await channel.close()
        await server.stop(0)
        if adapters is None:
            await container.openai_http().aclose()
            await container.gemini_http().aclose()
