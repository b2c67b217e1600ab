"""Helpers for the fault matrix (issue 9, item 8): the real server, driven through the
simulator's fault injection over real gRPC and real HTTP on loopback. One test per row.

Timeouts are small so that every row is fast: each test states the settings it relies on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from adapters.inbound.grpc.generated import proxy_pb2 as pb
from tests.harness import Samples, Stack, scrape

OPENAI, GEMINI = "gpt-4o-mini", "gemini-2.0-flash"
MODELS = (OPENAI, GEMINI)
CHAT_ENDPOINTS = ("openai.chat", "openai.chat.stream", "gemini.generate", "gemini.stream")


def ask(prompt: str, model: str = OPENAI, **kw: Any) -> pb.InferenceRequest:
    return pb.InferenceRequest(model=model, prompt=prompt, **kw)


def provider_of(model: str) -> str:
    return "gemini" if model.startswith("gemini") else "openai"


async def failure(call: Any) -> grpc.aio.AioRpcError:
    """The error a call (or a coroutine consuming one) ends with; fails the test if none."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def collect(chunks: AsyncIterator[pb.StreamChunk], into: list[pb.StreamChunk]) -> None:
    async for chunk in chunks:
        into.append(chunk)


def trailer(error: grpc.aio.AioRpcError, name: str) -> str | None:
    value = dict(error.trailing_metadata() or ()).get(name)
    return None if value is None else str(value)


def chat_requests(s: Stack) -> int:
    """Generation requests the simulator received (every attempt, every key)."""
    return sum(s.sim.stats.by_endpoint[e] for e in CHAT_ENDPOINTS)


def metric(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


async def metric_now(s: Stack, name: str, **labels: str) -> float | None:
    return metric(await scrape(s), name, **labels)


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of a metric's samples whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= set(ls))
