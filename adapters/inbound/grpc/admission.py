"""The admission `Gate` (adapters/inbound/admission.py) as a gRPC server interceptor. Runs
before a call reaches the servicer; health and reflection are never limited."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc

from adapters.inbound.admission import ClientAuth, Gate, Limits, Refused
from adapters.inbound.grpc.interceptor import Context, Continuation, Handler, wrap
from adapters.inbound.grpc.mapping import Status

__all__ = ["Admission", "ClientAuth", "Limits"]

PROTECTED_PREFIX = "/inferenceproxy."


def _status(refused: Refused) -> Status:
    failure = refused.failure
    return Status(grpc.StatusCode[failure.kind.name], failure.message, failure.retry_after)


class Admission(grpc.aio.ServerInterceptor):
    """Refuses a call with UNAUTHENTICATED (bad credential) or RESOURCE_EXHAUSTED with
    `retry-after-ms` (tenant over its rate, or MAX_CONCURRENT_REQUESTS calls in flight)."""

    def __init__(self, gate: Gate) -> None:
        self._gate = gate

    async def intercept_service(
        self,
        continuation: Continuation,
        details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(details)
        if handler is None or not details.method.startswith(PROTECTED_PREFIX):
            return handler
        try:
            await self._gate.admit(details.invocation_metadata, details.method)
        except Refused as refused:
            return _refuse(handler, _status(refused))
        return wrap(handler, self._counted) if self._gate.counts else handler

    @asynccontextmanager
    async def _counted(self, context: Context) -> AsyncIterator[None]:
        try:
            with self._gate.slot():
                yield
        except Refused as refused:  # only the slot raises it: the call never started
            status = _status(refused)
            await context.abort(status.code, status.details, status.trailing_metadata())


def _refuse(handler: Handler, status: Status) -> Handler:
    @asynccontextmanager
    async def deny(context: Context) -> AsyncIterator[None]:
        await context.abort(status.code, status.details, status.trailing_metadata())
        yield  # never reached: abort raises

    return wrap(handler, deny)
