from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from adapters.inbound.grpc.admission import Admission
from adapters.inbound.grpc.generated import proxy_pb2 as pb
from adapters.inbound.grpc.generated import proxy_pb2_grpc as pb_grpc
from adapters.inbound.grpc.interceptor import ErrorBoundary
from adapters.inbound.grpc.reflection import enable_reflection
from adapters.inbound.grpc.servicer import InferenceServicer

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["InferenceService"].full_name


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
    ) -> None:
        """`reuse_port`: share the port with the other workers (SO_REUSEPORT). Off otherwise
        (grpcio turns it on by default on Linux): a second instance on the same port must fail
        to start, not silently take half of the connections."""
        self._address = f"{host}:{port}"
        self._credentials = credentials
        self.health = health_aio.HealthServicer()
        interceptors: list[grpc.aio.ServerInterceptor] = [ErrorBoundary()]
        if admission is not None:
            interceptors.insert(0, admission)
        if tracing is not None:  # first, so its span covers auth and the error boundary
            interceptors.insert(0, tracing)
        self._server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.so_reuseport", int(reuse_port)),
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

    async def stop(self, grace: float) -> None:
        """Reports NOT_SERVING, takes no new calls, lets in-flight ones finish within `grace`."""
        self.serving = False
        await self._set_serving(False)
        await self._server.stop(grace)

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
