"""Tracing against a real grpc.aio server on loopback, spans kept by an in-memory exporter."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from adapters.observability.tracing import (
    NullTracer,
    OtelTracer,
    TracingInterceptor,
    inject_traceparent,
    setup_tracing,
)

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
CHUNKS = 3


@dataclass
class Seen:
    """What the test service's handlers saw as the current span."""

    span_ids: list[int] = field(default_factory=list)

    def note(self) -> None:
        self.span_ids.append(trace.get_current_span().get_span_context().span_id)


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider
    provider.shutdown()


def probe_service(seen: Seen) -> grpc.GenericRpcHandler:
    """A tiny service with raw-bytes messages: unary Echo, streaming Count, failing Fail."""

    async def echo(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        seen.note()
        return request

    async def count(
        request: bytes, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        for i in range(CHUNKS):
            seen.note()
            yield str(i).encode()

    async def hang(
        request: bytes, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        yield b"first"
        await asyncio.Event().wait()  # until the client cancels

    async def fail(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        await context.abort(grpc.StatusCode.UNAVAILABLE, "upstream down")
        raise AssertionError("unreachable")

    return grpc.method_handlers_generic_handler(
        "test.Probe",
        {
            "Echo": grpc.unary_unary_rpc_method_handler(echo),
            "Count": grpc.unary_stream_rpc_method_handler(count),
            "Fail": grpc.unary_unary_rpc_method_handler(fail),
            "Hang": grpc.unary_stream_rpc_method_handler(hang),
        },
    )


def unary(channel: grpc.aio.Channel, method: str) -> Any:
    return channel.unary_unary(method)


def streaming(channel: grpc.aio.Channel, method: str) -> Any:
    return channel.unary_stream(method)


def health(channel: grpc.aio.Channel) -> Any:
    return health_pb2_grpc.HealthStub(channel)


@dataclass
class Server:
    channel: grpc.aio.Channel
    seen: Seen


@asynccontextmanager
async def serving(interceptor: TracingInterceptor) -> AsyncIterator[Server]:
    seen = Seen()
    server = grpc.aio.server(interceptors=[interceptor])
    server.add_generic_rpc_handlers((probe_service(seen),))
    health_pb2_grpc.add_HealthServicer_to_server(health_aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield Server(channel, seen)
    finally:
        await server.stop(None)


@pytest.fixture
async def server(provider: TracerProvider) -> AsyncIterator[Server]:
    async with serving(TracingInterceptor(provider, untraced=())) as s:
        yield s


def finished(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return list(exporter.get_finished_spans())


def only(exporter: InMemorySpanExporter) -> ReadableSpan:
    spans = finished(exporter)
    assert len(spans) == 1, [s.name for s in spans]
    return spans[0]


async def test_a_server_span_continues_the_callers_trace(
    server: Server, exporter: InMemorySpanExporter
) -> None:
    stub = health(server.channel)
    await stub.Check(health_pb2.HealthCheckRequest(), metadata=(("traceparent", TRACEPARENT),))

    span = only(exporter)
    assert span.name == "grpc.health.v1.Health/Check"
    assert span.kind is SpanKind.SERVER
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert span.parent is not None
    assert span.parent.is_remote
    assert format(span.parent.span_id, "016x") == PARENT_ID
    attributes = dict(span.attributes or {})
    assert isinstance(attributes.pop("network.peer.port"), int)
    assert attributes == {
        "rpc.system": "grpc",
        "rpc.service": "grpc.health.v1.Health",
        "rpc.method": "Check",
        "rpc.grpc.status_code": 0,
        "network.peer.address": "127.0.0.1",
    }
    assert span.status.status_code is StatusCode.UNSET


async def test_without_traceparent_the_span_starts_a_trace(
    server: Server, exporter: InMemorySpanExporter
) -> None:
    await unary(server.channel, "/test.Probe/Echo")(b"hi")
    span = only(exporter)
    assert span.parent is None
    assert server.seen.span_ids == [span.context.span_id]


async def test_the_span_is_current_in_the_handler(
    server: Server, exporter: InMemorySpanExporter
) -> None:
    call = unary(server.channel, "/test.Probe/Echo")
    assert await call(b"hi", metadata=(("traceparent", TRACEPARENT),)) == b"hi"
    assert server.seen.span_ids == [only(exporter).context.span_id]


async def test_a_streaming_span_is_current_throughout_and_ends_with_the_stream(
    server: Server, exporter: InMemorySpanExporter
) -> None:
    call = streaming(server.channel, "/test.Probe/Count")(
        b"", metadata=(("traceparent", TRACEPARENT),)
    )
    assert await call.read() == b"0"
    assert [await call.read() for _ in range(CHUNKS - 1)] == [b"1", b"2"]
    assert await call.read() is grpc.aio.EOF
    assert await call.code() == grpc.StatusCode.OK

    span = only(exporter)
    assert span.name == "test.Probe/Count"
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert server.seen.span_ids == [span.context.span_id] * CHUNKS
    assert (span.attributes or {})["rpc.grpc.status_code"] == 0


async def test_a_stream_the_client_cancels_ends_its_span(
    server: Server, exporter: InMemorySpanExporter
) -> None:
    call = streaming(server.channel, "/test.Probe/Hang")(b"")
    assert await call.read() == b"first"
    call.cancel()
    for _ in range(200):  # the server learns of the cancellation asynchronously
        if finished(exporter):
            break
        await asyncio.sleep(0.01)
    span = only(exporter)
    assert (span.attributes or {})["rpc.grpc.status_code"] == grpc.StatusCode.CANCELLED.value[0]
    assert span.status.status_code is StatusCode.UNSET  # the client's choice, not a fault


async def test_an_aborted_call_records_its_status(
    server: Server, exporter: InMemorySpanExporter
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await unary(server.channel, "/test.Probe/Fail")(b"")
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE

    span = only(exporter)
    assert (span.attributes or {})["rpc.grpc.status_code"] == grpc.StatusCode.UNAVAILABLE.value[0]
    assert span.status.status_code is StatusCode.ERROR
    assert span.events == ()  # an abort is an answer, not an exception to record


async def test_probes_are_not_traced_by_default(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    async with serving(TracingInterceptor(provider)) as server:
        await health(server.channel).Check(health_pb2.HealthCheckRequest())
        await unary(server.channel, "/test.Probe/Echo")(b"hi")
    assert [s.name for s in finished(exporter)] == ["test.Probe/Echo"]


async def test_without_an_sdk_calls_still_work_and_nothing_is_recorded() -> None:
    async with serving(TracingInterceptor(trace.NoOpTracerProvider(), untraced=())) as server:
        call = streaming(server.channel, "/test.Probe/Count")
        chunks = [m async for m in call(b"", metadata=(("traceparent", TRACEPARENT),))]
        assert len(chunks) == CHUNKS
        # the caller's context is carried along even though nothing is recorded
        assert server.seen.span_ids == [int(PARENT_ID, 16)] * CHUNKS


def test_otel_tracer_nests_spans_and_records_attributes_events_and_errors(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    tracer = OtelTracer(provider)
    with tracer.span("inference", {"gen_ai.request.model": "gpt-4o"}) as outer:
        outer.set("gen_ai.usage.output_tokens", 7)
        with tracer.span("provider attempt", {"gen_ai.system": "openai"}) as attempt:
            attempt.event("retry", {"attempt": 1, "delay_s": 0.25})
            attempt.error(TimeoutError("upstream read timed out"))

    inner, outer_span = finished(exporter)
    assert inner.parent is not None
    assert inner.parent.span_id == outer_span.context.span_id
    assert dict(outer_span.attributes or {}) == {
        "gen_ai.request.model": "gpt-4o",
        "gen_ai.usage.output_tokens": 7,
    }
    assert [(e.name, dict(e.attributes or {})) for e in inner.events] == [
        ("retry", {"attempt": 1, "delay_s": 0.25}),
        ("exception", dict(inner.events[1].attributes or {})),
    ]
    assert inner.status.status_code is StatusCode.ERROR
    assert outer_span.status.status_code is StatusCode.UNSET


def test_an_exception_leaving_a_span_is_recorded(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    with pytest.raises(ValueError, match="bad"), OtelTracer(provider).span("cache lookup"):
        raise ValueError("bad")
    span = only(exporter)
    assert span.status.status_code is StatusCode.ERROR
    assert [e.name for e in span.events] == ["exception"]


def test_inject_traceparent_carries_the_current_span(provider: TracerProvider) -> None:
    outside: dict[str, str] = {}
    inject_traceparent(outside)
    assert outside == {}

    headers: dict[str, str] = {}
    with trace.get_tracer("test", tracer_provider=provider).start_as_current_span("call") as span:
        inject_traceparent(headers)
    context = span.get_span_context()
    flags = int(context.trace_flags)
    assert (
        headers["traceparent"] == f"00-{context.trace_id:032x}-{context.span_id:016x}-{flags:02x}"
    )


def test_null_tracer_records_nothing() -> None:
    with NullTracer().span("anything", {"a": 1}) as span:
        span.set("b", 2)
        span.event("c")
        span.error(RuntimeError())
    assert not trace.get_current_span().get_span_context().is_valid


@pytest.fixture
def no_otel_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in (
        "OTEL_SDK_DISABLED",
        "OTEL_TRACES_EXPORTER",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_SERVICE_NAME",
        "OTEL_RESOURCE_ATTRIBUTES",
    ):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_setup_is_a_no_op_when_disabled_or_not_configured(no_otel_env: pytest.MonkeyPatch) -> None:
    assert setup_tracing("llm-proxy", enabled=False, exporter=InMemorySpanExporter()) is None
    assert setup_tracing("llm-proxy", enabled=True, set_global=False) is None
    no_otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")
    no_otel_env.setenv("OTEL_SDK_DISABLED", "true")
    assert setup_tracing("llm-proxy", enabled=True, set_global=False) is None
    no_otel_env.delenv("OTEL_SDK_DISABLED")
    no_otel_env.setenv("OTEL_TRACES_EXPORTER", "none")
    assert setup_tracing("llm-proxy", enabled=True, set_global=False) is None


def test_an_otlp_endpoint_turns_export_on(no_otel_env: pytest.MonkeyPatch) -> None:
    no_otel_env.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://127.0.0.1:1")
    provider = setup_tracing("llm-proxy", enabled=True, set_global=False)
    assert provider is not None
    try:
        assert provider.resource.attributes["service.name"] == "llm-proxy"
    finally:
        provider.shutdown()


def test_otel_service_name_wins(no_otel_env: pytest.MonkeyPatch) -> None:
    no_otel_env.setenv("OTEL_SERVICE_NAME", "proxy-eu")
    provider = setup_tracing("llm-proxy", True, InMemorySpanExporter(), set_global=False)
    assert provider is not None
    assert provider.resource.attributes["service.name"] == "proxy-eu"
    provider.shutdown()


def test_given_exporter_receives_spans(no_otel_env: pytest.MonkeyPatch) -> None:
    exporter = InMemorySpanExporter()
    provider = setup_tracing("llm-proxy", True, exporter, set_global=False)
    assert provider is not None
    with OtelTracer(provider).span("one"):
        pass
    provider.force_flush()
    assert [s.name for s in exporter.get_finished_spans()] == ["one"]
    provider.shutdown()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("OTEL_TRACES_EXPORTER", "zipkin"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
    ],
)
def test_unsupported_settings_fail_naming_the_variable(
    no_otel_env: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    no_otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    no_otel_env.setenv(variable, value)
    with pytest.raises(ValueError, match=variable):
        setup_tracing("llm-proxy", enabled=True, set_global=False)
