from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from adapters.grpc.mapping import status_of
from domain.errors import ProxyError

log = logging.getLogger(__name__)


class ErrorBoundary(grpc.aio.ServerInterceptor):
    """Turns domain errors into their status, and anything unexpected into INTERNAL with a log
    line (the client sees no exception text or stack trace)."""

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _unary(handler.unary_unary, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _streaming(handler.unary_stream, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


def _unary(behaviour: Any, method: str) -> Any:
    async def wrapper(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await behaviour(request, context)
        except Exception as error:
            await _abort(context, error, method)

    return wrapper


def _streaming(behaviour: Any, method: str) -> Any:
    async def wrapper(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        try:
            async for item in behaviour(request, context):
                yield item
        except Exception as error:
            await _abort(context, error, method)

    return wrapper


async def _abort(
    context: grpc.aio.ServicerContext[Any, Any], error: Exception, method: str
) -> None:
    if isinstance(error, grpc.aio.AbortError):
        raise error
    if isinstance(error, ProxyError):
        status = status_of(error)
        log.info("%s failed: %s %s", method, status.code.name, type(error).__name__)
    else:
        log.exception("%s failed unexpectedly", method)
        status = status_of(ProxyError())
    await context.abort(status.code, status.details, status.trailing_metadata())
