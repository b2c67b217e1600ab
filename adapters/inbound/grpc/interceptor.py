"""Our server interceptors share one mechanism: `wrap` runs a handler (unary or streaming)
inside an async context manager, so an interceptor says only what happens around a call."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeAlias

import grpc

from adapters.inbound.grpc.mapping import status_of
from domain.errors import ProxyError

log = logging.getLogger(__name__)

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
Continuation: TypeAlias = Callable[[grpc.HandlerCallDetails], Awaitable["Handler | None"]]
Around: TypeAlias = Callable[[Context], AbstractAsyncContextManager[None]]


def wrap(handler: Handler, around: Around) -> Handler:
    """`handler` with each call (the whole stream, for a streaming one) run inside
    `around(context)`. Client streaming is not part of our API and passes unchanged."""
    if handler.unary_unary is not None:
        unary_behaviour: Any = handler.unary_unary

        async def unary(request: Any, context: Context) -> Any:
            async with around(context):
                return await unary_behaviour(request, context)

        return grpc.unary_unary_rpc_method_handler(
            unary,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.unary_stream is not None:
        stream_behaviour: Any = handler.unary_stream

        async def stream(request: Any, context: Context) -> AsyncIterator[Any]:
            async with around(context):
                responses = stream_behaviour(request, context)
                if inspect.isawaitable(responses):  # a handler that writes with context.write
                    await responses  # (grpc.health.v1's Watch)
                    return
                async for item in responses:
                    yield item

        return grpc.unary_stream_rpc_method_handler(
            stream,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return handler


class ErrorBoundary(grpc.aio.ServerInterceptor):
    """Turns domain errors into their status, and anything unexpected into INTERNAL with a log
    line (the client sees no exception text or stack trace). A call cancelled by its deadline
    or its client gets that code on the context, where the tracing interceptor reads it."""

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method

        @asynccontextmanager
        async def boundary(context: Context) -> AsyncIterator[None]:
            try:
                yield
            except asyncio.CancelledError:
                context.set_code(_cancellation_code(context))
                raise
            except Exception as error:
                await _abort(context, error, method)

        return wrap(handler, boundary)


def _cancellation_code(context: Context) -> grpc.StatusCode:
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return grpc.StatusCode.CANCELLED


async def _abort(context: Context, error: Exception, method: str) -> None:
    if isinstance(error, grpc.aio.AbortError):
        raise error
    if isinstance(error, ProxyError):
        status = status_of(error)
        log.info("%s failed: %s %s", method, status.code.name, type(error).__name__)
    else:
        log.exception("%s failed unexpectedly", method)
        status = status_of(ProxyError())
    await context.abort(status.code, status.details, status.trailing_metadata())
