from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from adapters.grpc import mapping
from adapters.grpc.generated import proxy_pb2 as pb
from adapters.grpc.generated import proxy_pb2_grpc as pb_grpc
from application.inference import InferenceService
from domain.model import Answer


class InferenceServicer(pb_grpc.InferenceServiceServicer):
    """Translates RPCs to the use case. Domain errors leave through the error interceptor."""

    def __init__(self, service: InferenceService) -> None:
        self._service = service

    async def Infer(
        self, request: pb.InferenceRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.InferenceResponse:
        answer = await self._service.infer(mapping.to_domain(request), context.time_remaining())
        return mapping.response(answer)

    async def InferStream(
        self, request: pb.InferenceRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.StreamChunk]:
        events = self._service.stream(mapping.to_domain(request), context.time_remaining())
        async for event in events:
            if isinstance(event, Answer):
                yield mapping.last_chunk(event)
            else:
                yield pb.StreamChunk(content=event.content)
