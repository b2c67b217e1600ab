from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc

from adapters.inbound.admission import ClientAuth
from adapters.inbound.drain import cut_here
from adapters.inbound.grpc import mapping
from adapters.inbound.grpc.generated import proxy_pb2 as pb
from adapters.inbound.grpc.generated import proxy_pb2_grpc as pb_grpc
from adapters.inbound.request_log import Outcome
from application.inference import InferenceService
from application.metering import Metering, tenant_name
from application.ports import Clock, Metrics
from domain.errors import ProxyError
from domain.model import Answer, InferenceRequest, RequestLimits

Context = grpc.aio.ServicerContext[Any, Any]
DEADLINE_SLACK = 0.25  # seconds: a cancellation this close to the deadline is the deadline


class InferenceServicer(pb_grpc.InferenceServiceServicer):
    """Translates RPCs to the use case and records each request's outcome. Domain errors leave
    through the error interceptor."""

    def __init__(
        self,
        service: InferenceService,
        metrics: Metrics,
        clock: Clock,
        auth: ClientAuth | None = None,
        limits: RequestLimits | None = None,
        metering: Metering | None = None,
    ) -> None:
        self._service = service
        self._metrics = metrics
        self._clock = clock
        self._auth = auth or ClientAuth(())
        self._limits = limits or RequestLimits()
        self._metering = metering

    async def Infer(self, request: pb.InferenceRequest, context: Context) -> pb.InferenceResponse:
        async with self._observed(request, context) as outcome:
            answer = await self._service.infer(
                self._domain(request, context, outcome), context.time_remaining()
            )
            outcome.answered(answer)
            return mapping.response(answer)

    async def InferStream(
        self, request: pb.InferenceRequest, context: Context
    ) -> AsyncIterator[pb.StreamChunk]:
        async with self._observed(request, context) as outcome:
            domain = self._domain(request, context, outcome)
            events = self._service.stream(domain, context.time_remaining())
            async for event in events:
                if isinstance(event, Answer):
                    outcome.answered(event)
                    yield mapping.last_chunk(event)
                else:
                    yield pb.StreamChunk(content=event.content)

    async def Usage(self, request: pb.UsageRequest, context: Context) -> pb.UsageResponse:
        if self._metering is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "usage is not metered here")
        assert self._metering is not None
        tenant = self._auth.tenant(context.invocation_metadata())
        return mapping.usage_report(
            await self._metering.spent(tenant), self._metering.budget(tenant)
        )

    def _domain(
        self, request: pb.InferenceRequest, context: Context, outcome: Outcome
    ) -> InferenceRequest:
        tenant = self._auth.tenant(context.invocation_metadata())
        outcome.tenant = tenant_name(tenant)
        return mapping.to_domain(request, self._limits, tenant=tenant)

    @asynccontextmanager
    async def _observed(
        self, request: pb.InferenceRequest, context: Context
    ) -> AsyncIterator[Outcome]:
        outcome = Outcome()
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
            # first (the server's deadline is later by the transit time), or the server's. So
            # does the shutdown's cut, after which the client gets UNAVAILABLE.
            left = context.time_remaining()
            if cut_here():
                status = "unavailable"
            elif left is not None and left <= DEADLINE_SLACK:
                status = "deadline_exceeded"
            else:
                status = "cancelled"
            raise
        finally:
            seconds = self._clock.now() - started
            model = self._limits.shown(request.model)  # a hostile name is not logged whole
            self._metrics.request_finished(
                outcome.provider, model, outcome.cache_status, status, seconds
            )
            outcome.log(status, model, seconds, self._limits)
