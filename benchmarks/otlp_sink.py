"""A stand-in for an OpenTelemetry collector: an OTLP/gRPC trace receiver on loopback that counts
the spans it is sent and throws them away. Used by benchmarks/tracing_cost.py.

    .venv/bin/python benchmarks/otlp_sink.py [--port 4317] [--seconds 60]

On its own it listens for `--seconds`, then prints what it received.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing.synchronize
import time
from multiprocessing.queues import Queue
from multiprocessing.sharedctypes import Synchronized

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_pb
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as trace_grpc

HOST = "127.0.0.1"


class SpanSink(trace_grpc.TraceServiceServicer):
    """Counts requests and spans; answers every export with an empty (full success) response."""

    def __init__(self) -> None:
        self.requests = 0
        self.spans = 0

    async def Export(
        self,
        request: trace_pb.ExportTraceServiceRequest,
        context: grpc.aio.ServicerContext[
            trace_pb.ExportTraceServiceRequest, trace_pb.ExportTraceServiceResponse
        ],
    ) -> trace_pb.ExportTraceServiceResponse:
        self.requests += 1
        self.spans += sum(
            len(scope.spans)
            for resource in request.resource_spans
            for scope in resource.scope_spans
        )
        return trace_pb.ExportTraceServiceResponse()


async def start_sink(port: int = 0) -> tuple[grpc.aio.Server, int, SpanSink]:
    """Starts the receiver on 127.0.0.1:`port` (0: an ephemeral port); returns the server, the
    bound port and the counters."""
    sink = SpanSink()
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)])
    trace_grpc.add_TraceServiceServicer_to_server(sink, server)
    bound = server.add_insecure_port(f"{HOST}:{port}")
    await server.start()
    return server, bound, sink


def run_in_child(
    ready: Queue[int],
    stop: multiprocessing.synchronize.Event,
    spans: Synchronized[int],
    requests: Synchronized[int],
    max_seconds: float = 600.0,
) -> None:
    """Target of a child process: puts the bound port on `ready`, keeps `spans` and `requests`
    up to date, and exits when `stop` is set (or after `max_seconds`)."""

    async def main() -> None:
        server, port, sink = await start_sink()
        ready.put(port)
        deadline = time.monotonic() + max_seconds
        while not stop.is_set() and time.monotonic() < deadline:
            spans.value, requests.value = sink.spans, sink.requests
            await asyncio.sleep(0.05)
        await server.stop(1.0)
        spans.value, requests.value = sink.spans, sink.requests

    asyncio.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=4317)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()

    async def run() -> None:
        server, port, sink = await start_sink(args.port)
        print(f"OTLP/gRPC sink on {HOST}:{port} for {args.seconds:.0f}s", flush=True)
        await asyncio.sleep(args.seconds)
        await server.stop(1.0)
        print(f"received {sink.spans} spans in {sink.requests} export requests")

    asyncio.run(run())


if __name__ == "__main__":
    main()
