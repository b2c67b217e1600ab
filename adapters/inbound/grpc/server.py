from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from adapters.inbound.drain import Drain, cut_margin
from adapters.inbound.grpc.admission import PROTECTED_PREFIX, Admission
from adapters.inbound.grpc.generated import proxy_pb2 as pb
from adapters.inbound.grpc.generated import proxy_pb2_grpc as pb_grpc
from adapters.inbound.grpc.interceptor import Context, Continuation, ErrorBoundary, Handler, wrap
from adapters.inbound.grpc.reflection import enable_reflection
from adapters.inbound.grpc.servicer import InferenceServicer

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["InferenceService"].full_name


@dataclass(frozen=True)
class ConnectionLimits:
    """The gRPC side of the HTTP listener's guards (docs/security.md): at most
    `max_connections` (MAX_CONNECTIONS), a connection idle (no call) for `idle` seconds
    (GRPC_MAX_CONNECTION_IDLE) or older than `age` (GRPC_MAX_CONNECTION_AGE) is sent GOAWAY
    (clients reconnect transparently), a handshake must end within `handshake` seconds
    (HTTP_HEADER_TIMEOUT)."""

    max_connections: int = 4096
    idle: float = 300.0
    age: float = 1800.0
    handshake: float = 10.0

    def options(self, grace: float) -> list[tuple[str, int]]:
        return [
            ("grpc.max_allowed_incoming_connections", self.max_connections),
            ("grpc.max_connection_idle_ms", round(self.idle * 1000)),
            ("grpc.max_connection_age_ms", round(self.age * 1000)),
            # a call still running when its connection grows old gets SHUTDOWN_GRACE to end
            ("grpc.max_connection_age_grace_ms", round(grace * 1000)),
            ("grpc.server_handshake_timeout_ms", round(self.handshake * 1000)),
        ]


class Draining(grpc.aio.ServerInterceptor):
    """Runs each inference call inside the server's `Drain`: at shutdown a call still running
    when the grace is nearly over ends with UNAVAILABLE (raised inside the ErrorBoundary)."""

    def __init__(self, drain: Drain) -> None:
        self._drain = drain

    async def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(details)
        if handler is None or not details.method.startswith(PROTECTED_PREFIX):
            return handler
        return wrap(handler, self._scoped)

    @asynccontextmanager
    async def _scoped(self, _context: Context) -> AsyncIterator[None]:
        with self._drain.call():
            async with self._drain.scope():
                yield


class GrpcServer:
    """The gRPC server with reflection and grpc.health.v1; `port` is known after `start`."""

    def __init__(
        self,
        servicer: InferenceServicer,
        host: str,
        port: int,
        max_message_bytes: int,
        admission: Admission | None = None,
        tracing: grpc.aio.ServerInterceptor | None = None,
        credentials: grpc.ServerCredentials | None = None,
        reuse_port: bool = False,
        limits: ConnectionLimits | None = None,
        grace: float = 10.0,
    ) -> None:
        """`reuse_port`: share the port with the other workers (SO_REUSEPORT). Off otherwise
        (grpcio turns it on by default on Linux): a second instance on the same port must fail
        to start, not silently take half of the connections."""
        self._address = f"{host}:{port}"
        self._credentials = credentials
        self._grace = grace
        self.drain = Drain()
        self.health = health_aio.HealthServicer()
        interceptors: list[grpc.aio.ServerInterceptor] = [ErrorBoundary(), Draining(self.drain)]
        if admission is not None:
            interceptors.insert(0, admission)
        if tracing is not None:  # first, so its span covers auth and the error boundary
            interceptors.insert(0, tracing)
        self._server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.so_reuseport", int(reuse_port)),
                *(limits or ConnectionLimits()).options(grace),
            ],
        )
        pb_grpc.add_InferenceServiceServicer_to_server(servicer, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        enable_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name),
            self._server,
        )
        self.port = 0
        self.serving = False

    async def start(self) -> int:
        """Raises OSError when the address cannot be bound (e.g. the port is in use)."""
        try:
            if self._credentials is None:
                self.port = self._server.add_insecure_port(self._address)
            else:
                self.port = self._server.add_secure_port(self._address, self._credentials)
        except RuntimeError as error:  # grpc's way of saying the bind failed
            raise OSError(f"cannot listen on {self._address}: {error}") from None
        if self.port == 0:
            raise OSError(f"cannot listen on {self._address}")
        await self._server.start()
        await self._set_serving(True)
        self.serving = True
        return self.port

    async def stop(self, grace: float | None = None) -> None:
        """Reports NOT_SERVING, takes no new calls, lets in-flight ones run until two margins
        before `grace` (SHUTDOWN_GRACE) ends, then ends the rest with UNAVAILABLE."""
        grace = self._grace if grace is None else grace
        self.serving = False
        await self._set_serving(False)
        stopping = asyncio.ensure_future(self._server.stop(grace))
        await self.drain.settle(grace - 2 * cut_margin(grace))
        await stopping

    async def wait(self) -> None:
        await self._server.wait_for_termination()

    async def _set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)
