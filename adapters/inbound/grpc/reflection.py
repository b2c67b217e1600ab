"""Server reflection, both versions: `grpc.reflection.v1` (what current grpcurl, Postman and
grpcui ask first) and `grpc.reflection.v1alpha` (older clients). grpcio-reflection ships only
v1alpha; v1 is the same protocol with the package renamed (the messages are wire-identical), so
one servicer answers both, and v1's descriptor is v1alpha's with its package renamed."""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection_pb2 as alpha
from grpc_reflection.v1alpha._async import ReflectionServicer
from grpc_reflection.v1alpha.reflection import SERVICE_NAME as V1ALPHA

V1 = "grpc.reflection.v1.ServerReflection"
_V1_FILE = "grpc/reflection/v1/reflection.proto"
_METHOD = "ServerReflectionInfo"


def _register_v1_descriptor() -> None:
    """Adds grpc/reflection/v1/reflection.proto to the default pool, so a client reflecting on
    the v1 service itself gets its descriptor too."""
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(_V1_FILE)
        return
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    alpha.DESCRIPTOR.CopyToProto(proto)
    proto.name, proto.package = _V1_FILE, "grpc.reflection.v1"
    for message in proto.message_type:
        for field in message.field:
            if field.type_name:
                field.type_name = field.type_name.replace(".v1alpha.", ".v1.")
    for method in proto.service[0].method:
        method.input_type = method.input_type.replace(".v1alpha.", ".v1.")
        method.output_type = method.output_type.replace(".v1alpha.", ".v1.")
    pool.Add(proto)


def enable_reflection(services: Iterable[str], server: grpc.aio.Server) -> None:
    """Serves reflection v1 and v1alpha for `services` (and for reflection itself)."""
    _register_v1_descriptor()
    servicer = ReflectionServicer((*services, V1, V1ALPHA))
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=alpha.ServerReflectionRequest.FromString,
        response_serializer=alpha.ServerReflectionResponse.SerializeToString,
    )
    for service in (V1, V1ALPHA):
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, {_METHOD: handler}),)
        )
