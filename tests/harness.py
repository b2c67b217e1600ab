"""A proxy on loopback built and started by the real container, for integration and e2e tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
from aiohttp import web
from dependency_injector import providers
from prometheus_client.parser import text_string_to_metric_families
from qdrant_client import AsyncQdrantClient

from adapters.inbound.grpc.generated import proxy_pb2_grpc as pb_grpc
from adapters.inbound.http.server import HttpServer
from adapters.outbound.vector.qdrant import QdrantIndex
from adapters.process.lifecycle import http_connection_limits, http_ssl_context
from adapters.process.settings import load_settings
from application.ports import Provider
from cli import serve
from container import Container
from simulator import RunningSimulator, SimulatorConfig, running_simulator

FAST = {
    "grpc_host": "127.0.0.1",  # explicit: with AUTH_TOKENS the default would be 0.0.0.0
    "grpc_port": 0,
    "metrics_port": 0,
    "http_port": 0,  # off; `running_proxy(http=True)` serves it on an ephemeral port
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
    metrics_port: int
    http_port: int = 0  # 0: the OpenAI-compatible API is off

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/v1"


@asynccontextmanager
async def running_proxy(
    adapters: Mapping[str, Provider] | None = None,
    overrides: Mapping[str, object] | None = None,
    http: bool = False,
    **settings: Any,
) -> AsyncIterator[RunningProxy]:
    """`serve()` from the real container. `adapters` (fakes) replace the real providers;
    `overrides` replace other container providers by name with the given objects. `http`: the
    OpenAI-compatible API on an ephemeral loopback port (HTTP_PORT=0 means off, not "any")."""
    container = Container(settings=load_settings(**{**FAST, **settings}))
    if http:
        server = providers.Singleton(
            HttpServer, container.openai_api, "127.0.0.1", 0,
            ssl_context=providers.Callable(http_ssl_context, container.settings),
            limits=providers.Callable(http_connection_limits, container.settings),
        )  # fmt: skip
        container.http_server.override(server)
    if adapters is not None:
        container.provider_adapters.override(providers.Object(dict(adapters)))
    for name, value in (overrides or {}).items():
        getattr(container, name).override(providers.Object(value))
    stop = asyncio.Event()
    serving = asyncio.create_task(serve(container, stop))
    server, ops = container.grpc_server(), container.ops_server()
    async with asyncio.timeout(30):
        while not server.serving:
            if serving.done():
                serving.result()  # startup failed: raise its error
            await asyncio.sleep(0.01)
    http_server = container.http_server()
    async with asyncio.timeout(30):
        while http_server is not None and not http_server.port:
            if serving.done():
                serving.result()
            await asyncio.sleep(0.01)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        yield RunningProxy(
            pb_grpc.InferenceServiceStub(channel), channel, container, server.port, ops.port,
            http_server.port if http_server is not None else 0,
        )  # fmt: skip
    finally:
        await channel.close()
        stop.set()
        await asyncio.wait_for(serving, 30)


OPENAI_KEYS = ("sk-e2e-openai-one", "sk-e2e-openai-two")
GEMINI_KEYS = ("AIza-e2e-gemini-one", "AIza-e2e-gemini-two")
ANTHROPIC_KEYS = ("sk-ant-e2e-one", "sk-ant-e2e-two")


@dataclass
class Stack:
    proxy: RunningProxy
    sim: RunningSimulator

    @property
    def stub(self) -> Any:
        return self.proxy.stub


@asynccontextmanager
async def stack(
    sim: SimulatorConfig | None = None,
    overrides: Mapping[str, object] | None = None,
    **settings: Any,
) -> AsyncIterator[Stack]:
    async with running_simulator(sim or SimulatorConfig()) as simulator:
        upstream = {
            "openai_base_url": simulator.openai_base_url,
            "gemini_base_url": simulator.gemini_base_url,
            "openai_api_keys": ",".join(OPENAI_KEYS),
            "gemini_api_keys": ",".join(GEMINI_KEYS),
            "anthropic_base_url": simulator.anthropic_base_url,
            "anthropic_api_keys": ",".join(ANTHROPIC_KEYS),
        }
        async with running_proxy(overrides=overrides, **{**upstream, **settings}) as proxy:
            yield Stack(proxy, simulator)


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(s: Stack) -> Samples:
    """The proxy's /metrics, parsed: (name, sorted labels) -> value."""
    return await scrape_port(s.proxy.metrics_port)


async def scrape_port(metrics_port: int) -> Samples:
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


# A loaded 2-core machine can take longer than CACHE_TIMEOUT's default to embed; tests about cache
# behaviour use this (the timeout has tests of its own).
SLACK = {"cache_timeout": "3s"}


def remote_cache(directory: Path, redis_addr: str, collection: str) -> dict[str, Any]:
    """`stack()` arguments for the remote cache mode with the local embedder: Redis at
    `redis_addr` and the Qdrant adapter over qdrant-client's local mode (no Qdrant server exists
    here)."""
    index = QdrantIndex(AsyncQdrantClient(path=str(directory / "qdrant")), collection)
    return {
        "cache_mode": "remote",
        "embedder": "local",
        "redis_addr": redis_addr,
        "overrides": {"vector_index": index},
        **SLACK,
    }


@asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[int]:
    """A hand-written upstream (an aiohttp app) on an ephemeral loopback port, while it runs."""
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()
