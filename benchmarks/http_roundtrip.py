"""The OpenAI-compatible HTTP API's own overhead next to gRPC's: the same use case and the same
instant in-process provider as benchmarks/roundtrip.py, called over gRPC, over HTTP with a
keep-alive aiohttp client, and over HTTP with the official openai SDK (plain and streamed; the
SDK runs on httpx, whose connection pool is the bottleneck under concurrency: see
docs/benchmarks.md).

    .venv/bin/python benchmarks/http_roundtrip.py [--requests 1000] [--concurrency 16]

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
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp
import grpc
import openai
from dependency_injector import providers

from adapters.inbound.grpc.generated import proxy_pb2 as pb
from adapters.inbound.grpc.generated import proxy_pb2_grpc as pb_grpc
from adapters.process.settings import load_settings
from benchmarks.roundtrip import InstantProvider, percentile
from cli import serve
from container import Container

MESSAGES = [{"role": "user", "content": "q"}]


def run_server(grpc_port: int, http_port: int) -> None:
    async def main() -> None:
        settings = load_settings(
            grpc_host="127.0.0.1",
            grpc_port=grpc_port,
            http_host="127.0.0.1",
            http_port=http_port,
            metrics_port=0,
            openai_api_keys="sk-bench",
            cache_mode="off",
        )
        container = Container(settings=settings)
        container.provider_adapters.override(providers.Object({"openai": InstantProvider()}))
        await serve(container, asyncio.Event())

    asyncio.run(main())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def timed(name: str, call: Callable[[int], Awaitable[object]], n: int, c: int) -> None:
    for i in range(100):  # warm-up
        await call(i)
    latencies = []
    for i in range(n):
        started = time.perf_counter()
        await call(i)
        latencies.append((time.perf_counter() - started) * 1000)
    queue = iter(range(n))

    async def worker() -> None:
        for i in queue:
            await call(i)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(c)))
    rate = n / (time.perf_counter() - started)
    print(
        f"{name:<28} sequential median {statistics.median(latencies):.2f} ms, "
        f"p99 {percentile(latencies, 99):.2f} ms; {c} concurrent {rate:.0f} req/s"
    )


async def measure(grpc_port: int, http_port: int, n: int, c: int) -> None:
    base = f"http://127.0.0.1:{http_port}/v1"
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel,
        aiohttp.ClientSession() as http,
    ):
        await asyncio.wait_for(channel.channel_ready(), 20)
        stub = pb_grpc.InferenceServiceStub(channel)
        sdk = openai.AsyncOpenAI(base_url=base, api_key="unused", max_retries=0)

        async def over_grpc(i: int) -> object:
            return await stub.Infer(pb.InferenceRequest(model="gpt-4o", prompt=f"q {i}"))

        async def over_http(i: int) -> object:
            body = {"model": "gpt-4o", "messages": [{"role": "user", "content": f"q {i}"}]}
            async with http.post(f"{base}/chat/completions", json=body) as response:
                response.raise_for_status()
                return await response.read()

        async def over_sdk(i: int) -> object:
            return await sdk.chat.completions.create(model="gpt-4o", messages=MESSAGES)

        async def over_sdk_stream(i: int) -> object:
            stream = await sdk.chat.completions.create(
                model="gpt-4o", messages=MESSAGES, stream=True
            )
            return [chunk async for chunk in stream]

        await timed("gRPC Infer", over_grpc, n, c)
        await timed("HTTP (aiohttp, keep-alive)", over_http, n, c)
        await timed("HTTP (openai SDK)", over_sdk, n, c)
        await timed("HTTP stream (openai SDK)", over_sdk_stream, n, c)
        await sdk.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    ports = free_port(), free_port()
    server = multiprocessing.get_context("spawn").Process(target=run_server, args=ports)
    server.start()
    try:
        time.sleep(3)
        asyncio.run(measure(*ports, args.requests, args.concurrency))
    finally:
        server.terminate()
        server.join(10)


if __name__ == "__main__":
    main()
