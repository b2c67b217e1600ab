from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from adapters.grpc.mapping import status_of
from domain.errors import Unauthenticated

_PROTECTED_PREFIX = "/inferenceproxy."


class BearerAuth(grpc.aio.ServerInterceptor):
    """Requires `authorization: Bearer <token>` metadata on the inference service when tokens
    are configured. Health and reflection stay open for probes and tooling."""

    def __init__(self, tokens: tuple[str, ...]) -> None:
        self._tokens = tuple(t.encode() for t in tokens)

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None or not handler_call_details.method.startswith(_PROTECTED_PREFIX):
            return handler
        problem = self._problem(handler_call_details.invocation_metadata or ())
        if problem is None:
            return handler
        status = status_of(Unauthenticated(problem))

        async def deny(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            await context.abort(status.code, status.details)

        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                deny,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return grpc.unary_unary_rpc_method_handler(
            deny,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _problem(self, metadata: Any) -> str | None:
        values = [v for k, v in metadata if k == "authorization"]
        if not values:
            return "missing credentials: send metadata 'authorization: Bearer <token>'"
        value = values[0].encode() if isinstance(values[0], str) else values[0]
        scheme, _, token = value.partition(b" ")
        if scheme.lower() != b"bearer" or not token:
            return "malformed credentials: expected 'authorization: Bearer <token>'"
        # compare against every token so the time taken does not tell which one matched
        matched = [hmac.compare_digest(token.strip(), known) for known in self._tokens]
        return None if any(matched) else "invalid token"
