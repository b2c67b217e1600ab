"""Latency of a local round trip through the proxy: gRPC client -> server -> use case -> an
instant in-process provider -> back. Measures the proxy's own overhead, not a provider's.

    .venv/bin/python benchmarks/roundtrip.py [--requests 2000] [--concurrency 16]

The server runs in a child process so client and server do not share an event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import socket
import statistics
import sys
import time
from collections.abc import AsyncGenerator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc
from dependency_injector import providers

from adapters.inbound.grpc.generated import proxy_pb2 as pb
from adapters.inbound.grpc.generated import proxy_pb2_grpc as pb_grpc
from adapters.process.settings import load_settings
from application.ports import Provider
from cli import serve
from container import Container
from domain.key_pool import ApiKey
from domain.model import (
    Completion,
    Delta,
    FinishReason,
    InferenceRequest,
    StreamEnd,
    StreamEvent,
    Usage,
)


class InstantProvider(Provider):
    name = "openai"

    async def complete(self, request: InferenceRequest, key: ApiKey) -> Completion:
        return Completion("ok", request.model, self.name, FinishReason.STOP, Usage(1, 1))

    async def stream(
        self, request: InferenceRequest, key: ApiKey
    ) -> AsyncGenerator[StreamEvent, None]:
        yield Delta("ok")
        yield StreamEnd(request.model, FinishReason.STOP, Usage(1, 1))


def run_server(port: int) -> None:
    async def main() -> None:
        settings = load_settings(
            grpc_host="127.0.0.1",
            grpc_port=port,
            metrics_port=0,
            http_port=0,  # benchmarks/http_roundtrip.py measures the HTTP API
            openai_api_keys="sk-bench",
            cache_mode="off",  # the proxy's own overhead; benchmarks/cache_latency.py has the cache
        )
        container = Container(settings=settings)
        container.provider_adapters.override(providers.Object({"openai": InstantProvider()}))
        await serve(container, asyncio.Event())

    asyncio.run(main())


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def measure(port: int, requests: int, concurrency: int) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        await asyncio.wait_for(channel.channel_ready(), 20)
        stub = pb_grpc.InferenceServiceStub(channel)
        for i in range(200):  # warm-up
            await stub.Infer(pb.InferenceRequest(model="gpt-4o", prompt=f"warm {i}"))

        latencies: list[float] = []
        for i in range(requests):
            started = time.perf_counter()
            await stub.Infer(pb.InferenceRequest(model="gpt-4o", prompt=f"q {i}"))
            latencies.append(time.perf_counter() - started)
        ms = [x * 1000 for x in latencies]
        print(
            f"unary, sequential, {requests} calls: median {statistics.median(ms):.2f} ms, "
            f"p99 {percentile(ms, 99):.2f} ms"
        )

        queue = iter(range(requests))

        async def worker() -> None:
            for i in queue:
                await stub.Infer(pb.InferenceRequest(model="gpt-4o", prompt=f"c {i}"))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        print(f"unary, {concurrency} concurrent, {requests} calls: {requests / elapsed:.0f} req/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = multiprocessing.get_context("spawn").Process(target=run_server, args=(port,))
    server.start()
    try:
        asyncio.run(measure(port, args.requests, args.concurrency))
    finally:
        server.terminate()
        server.join(10)


if __name__ == "__main__":
    main()
