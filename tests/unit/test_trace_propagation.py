"""The caller's W3C trace context reaches the upstream HTTP call and the log lines, over real
gRPC and real HTTP on loopback, with tracing on and with tracing off."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from aiohttp import web
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from adapters.inbound.grpc.interceptor import ErrorBoundary
from adapters.outbound.observability.logs import TraceContextFilter
from adapters.outbound.observability.tracing import build_server_interceptor
from adapters.outbound.providers import http_client
from tests.harness import serving

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"

log = logging.getLogger("test.propagation")


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[str, list[dict[str, str]]]]:
    """An HTTP server that answers 200 and keeps the headers of every request it got."""
    received: list[dict[str, str]] = []

    async def answer(request: web.Request) -> web.Response:
        received.append(dict(request.headers))
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", answer)
    async with serving(app) as port:
        yield f"http://127.0.0.1:{port}", received


@pytest.fixture
def records() -> Iterator[list[logging.LogRecord]]:
    kept: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            kept.append(record)

    handler = Keep()
    handler.addFilter(TraceContextFilter())
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    yield kept
    log.removeHandler(handler)


async def call_through_proxy(
    provider: trace.TracerProvider, base_url: str, metadata: tuple[tuple[str, str], ...]
) -> None:
    """A gRPC server built like GrpcServer (tracing first, the error boundary inside) whose
    handler logs a line and calls the upstream with a client from `http_client`."""
    client = http_client(base_url, tracer_provider=provider)

    async def handle(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        log.info("handling")
        (await client.post("/v1/chat/completions", json={})).raise_for_status()
        return b"done"

    server = grpc.aio.server(interceptors=[build_server_interceptor(provider), ErrorBoundary()])
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "inferenceproxy.Probe", {"Call": grpc.unary_unary_rpc_method_handler(handle)}
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call: Any = channel.unary_unary("/inferenceproxy.Probe/Call")
            assert await call(b"", metadata=metadata) == b"done"
    finally:
        await server.stop(None)
        await client.aclose()


def traceparent_trace_id(headers: dict[str, str]) -> str:
    return headers["traceparent"].split("-")[1]


async def test_tracing_off_carries_the_callers_trace_upstream_and_into_the_logs(
    upstream: tuple[str, list[dict[str, str]]], records: list[logging.LogRecord]
) -> None:
    base_url, received = upstream
    await call_through_proxy(trace.NoOpTracerProvider(), base_url, (("traceparent", TRACEPARENT),))
    (headers,) = received
    # no span of ours exists: the caller's own span is the parent upstream
    assert headers["traceparent"] == TRACEPARENT
    assert "baggage" not in headers
    (record,) = [r for r in records if r.getMessage() == "handling"]
    assert getattr(record, "trace_id", None) == TRACE_ID


async def test_tracing_off_without_traceparent_sends_none(
    upstream: tuple[str, list[dict[str, str]]], records: list[logging.LogRecord]
) -> None:
    base_url, received = upstream
    await call_through_proxy(trace.NoOpTracerProvider(), base_url, ())
    (headers,) = received
    assert "traceparent" not in headers
    (record,) = [r for r in records if r.getMessage() == "handling"]
    assert getattr(record, "trace_id", None) is None


async def test_tracing_on_sends_the_client_spans_context_in_the_callers_trace(
    upstream: tuple[str, list[dict[str, str]]], records: list[logging.LogRecord]
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    base_url, received = upstream
    try:
        await call_through_proxy(provider, base_url, (("traceparent", TRACEPARENT),))
    finally:
        provider.shutdown()
    (headers,) = received
    assert traceparent_trace_id(headers) == TRACE_ID
    spans = {span.kind: span for span in exporter.get_finished_spans()}
    client, server = spans[SpanKind.CLIENT], spans[SpanKind.SERVER]
    assert headers["traceparent"].split("-")[2] == format(client.context.span_id, "016x")
    assert client.parent is not None
    assert client.parent.span_id == server.context.span_id
    assert server.parent is not None
    assert format(server.parent.span_id, "016x") == PARENT_ID
    (record,) = [r for r in records if r.getMessage() == "handling"]
    assert getattr(record, "trace_id", None) == TRACE_ID
    assert getattr(record, "span_id", None) == format(server.context.span_id, "016x")


async def test_tracing_on_an_unsampled_caller_records_nothing_but_its_trace_travels(
    upstream: tuple[str, list[dict[str, str]]], records: list[logging.LogRecord]
) -> None:
    """The SDK's default sampler follows the caller's sampled flag (ParentBased): a caller that
    sampled out gets no spans recorded, yet its trace id still reaches the upstream and logs."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    base_url, received = upstream
    unsampled = f"00-{TRACE_ID}-{PARENT_ID}-00"
    try:
        await call_through_proxy(provider, base_url, (("traceparent", unsampled),))
    finally:
        provider.shutdown()
    (headers,) = received
    assert traceparent_trace_id(headers) == TRACE_ID
    assert headers["traceparent"].endswith("-00")
    assert exporter.get_finished_spans() == ()
    (record,) = [r for r in records if r.getMessage() == "handling"]
    assert getattr(record, "trace_id", None) == TRACE_ID
