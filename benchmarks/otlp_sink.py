"""A stand-in for an OpenTelemetry collector: OTLP trace receivers on loopback, over gRPC and over
HTTP (http/protobuf, `POST /v1/traces`), that count the spans they are sent and throw them away.
Used by benchmarks/tracing_cost.py and the tracing tests.

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
from aiohttp import web
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
        self.count(request)
        return trace_pb.ExportTraceServiceResponse()

    async def export_http(self, request: web.Request) -> web.Response:
        self.count(trace_pb.ExportTraceServiceRequest.FromString(await request.read()))
        body = trace_pb.ExportTraceServiceResponse().SerializeToString()
        return web.Response(body=body, content_type="application/x-protobuf")

    def count(self, request: trace_pb.ExportTraceServiceRequest) -> None:
        self.requests += 1
        self.spans += sum(
            len(scope.spans)
            for resource in request.resource_spans
            for scope in resource.scope_spans
        )


async def start_sink(port: int = 0) -> tuple[grpc.aio.Server, int, SpanSink]:
    """Starts the gRPC receiver on 127.0.0.1:`port` (0: an ephemeral port); returns the server,
    the bound port and the counters."""
    sink = SpanSink()
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)])
    trace_grpc.add_TraceServiceServicer_to_server(sink, server)
    bound = server.add_insecure_port(f"{HOST}:{port}")
    await server.start()
    return server, bound, sink


async def start_http_sink(sink: SpanSink, port: int = 0) -> tuple[web.AppRunner, int]:
    """The http/protobuf receiver counting into `sink`; returns the runner and the bound port."""
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/traces", sink.export_http)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, HOST, port).start()
    return runner, runner.addresses[0][1]


def run_in_child(
    ready: Queue[tuple[int, int]],
    stop: multiprocessing.synchronize.Event,
    spans: Synchronized[int],
    requests: Synchronized[int],
    max_seconds: float = 600.0,
) -> None:
    """Target of a child process: puts the bound ports (gRPC, HTTP) on `ready`, keeps `spans`
    and `requests` up to date, and exits when `stop` is set (or after `max_seconds`)."""

    async def main() -> None:
        server, port, sink = await start_sink()
        runner, http_port = await start_http_sink(sink)
        ready.put((port, http_port))
        deadline = time.monotonic() + max_seconds
        while not stop.is_set() and time.monotonic() < deadline:
            spans.value, requests.value = sink.spans, sink.requests
            await asyncio.sleep(0.05)
        await server.stop(1.0)
        await runner.cleanup()
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
