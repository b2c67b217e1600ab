from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc

from adapters.grpc import mapping
from adapters.grpc.generated import proxy_pb2 as pb
from adapters.grpc.generated import proxy_pb2_grpc as pb_grpc
from application.inference import InferenceService
from application.ports import Clock, Metrics
from domain.errors import ProxyError
from domain.model import Answer, CacheStatus, InferenceRequest

Context = grpc.aio.ServicerContext[Any, Any]
log = logging.getLogger("llm_proxy.requests")
DEADLINE_SLACK = 0.25  # seconds: a cancellation this close to the deadline is the deadline


@dataclass
class _Outcome:
    provider: str = ""
    cache_status: CacheStatus = CacheStatus.MISS

    def answered(self, answer: Answer) -> None:
        self.provider = answer.completion.provider
        self.cache_status = answer.cache.status


class InferenceServicer(pb_grpc.InferenceServiceServicer):
    """Translates RPCs to the use case and records each request's outcome. Domain errors leave
    through the error interceptor."""

    def __init__(self, service: InferenceService, metrics: Metrics, clock: Clock) -> None:
        self._service = service
        self._metrics = metrics
        self._clock = clock

    async def Infer(self, request: pb.InferenceRequest, context: Context) -> pb.InferenceResponse:
        async with self._observed(request, context) as outcome:
            answer = await self._service.infer(_domain(request, context), context.time_remaining())
            outcome.answered(answer)
            return mapping.response(answer)

    async def InferStream(
        self, request: pb.InferenceRequest, context: Context
    ) -> AsyncIterator[pb.StreamChunk]:
        async with self._observed(request, context) as outcome:
            events = self._service.stream(_domain(request, context), context.time_remaining())
            async for event in events:
                if isinstance(event, Answer):
                    outcome.answered(event)
                    yield mapping.last_chunk(event)
                else:
                    yield pb.StreamChunk(content=event.content)

    @asynccontextmanager
    async def _observed(
        self, request: pb.InferenceRequest, context: Context
    ) -> AsyncIterator[_Outcome]:
        outcome = _Outcome()
        started = self._clock.now()
        self._metrics.request_started()
        status = "internal"
        try:
            yield outcome
            status = "ok"
        except ProxyError as error:
            status = mapping.status_of(error).code.name.lower()
            outcome.provider = getattr(error, "provider", outcome.provider)
            raise
        except (asyncio.CancelledError, GeneratorExit):
            # A client's deadline ends the call as a cancellation: the client's timer fires
            # first (the server's deadline is later by the transit time), or the server's.
            left = context.time_remaining()
            status = (
                "deadline_exceeded" if left is not None and left <= DEADLINE_SLACK else "cancelled"
            )
            raise
        finally:
            seconds = self._clock.now() - started
            self._metrics.request_finished(
                outcome.provider, request.model, outcome.cache_status, status, seconds
            )
            log.info(
                "request %s %s %s %.1fms",
                status,
                request.model,
                outcome.cache_status.value,
                seconds * 1000,
                extra={
                    "outcome": status,
                    "latency_ms": round(seconds * 1000, 2),
                    "provider": outcome.provider,
                    "model": request.model,
                    "cache_status": outcome.cache_status.value,
                },
            )


def _domain(request: pb.InferenceRequest, context: Context) -> InferenceRequest:
    return mapping.to_domain(request, tenant=_tenant(context))


def _tenant(context: Context) -> str:
    """Clients are told apart by a fingerprint of their bearer token (never the token)."""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            raw = value.encode() if isinstance(value, str) else value
            return "tenant-" + hashlib.sha256(raw).hexdigest()[:16]
    return ""
