"""Tracing against a real grpc.aio server on loopback, spans kept by an in-memory exporter."""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
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

from adapters.inbound.admission import ClientAuth, Gate, Limits
from adapters.inbound.grpc.admission import Admission
from adapters.inbound.grpc.interceptor import ErrorBoundary
from adapters.outbound.observability.tracing import (
    NullTracer,
    OtelTracer,
    build_server_interceptor,
    build_tracer_provider,
    inject_context,
    is_recording,
)
from adapters.process.config_error import ConfigError
from tests.fakes import FakeClock

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
async def serving(interceptor: grpc.aio.ServerInterceptor) -> AsyncIterator[Server]:
    seen = Seen()
    # as in GrpcServer: tracing first, the error boundary (which names cancellations) inside
    server = grpc.aio.server(interceptors=[interceptor, ErrorBoundary()])
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
    async with serving(build_server_interceptor(provider)) as s:
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
    call = unary(server.channel, "/test.Probe/Echo")
    await call(b"hi", metadata=(("traceparent", TRACEPARENT),))

    span = only(exporter)
    assert span.name == "/test.Probe/Echo"
    assert span.kind is SpanKind.SERVER
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert span.parent is not None
    assert span.parent.is_remote
    assert format(span.parent.span_id, "016x") == PARENT_ID
    attributes = dict(span.attributes or {})
    assert {
        k: v for k, v in attributes.items() if k.startswith("rpc.") and k != "rpc.user_agent"
    } == {
        "rpc.system": "grpc",
        "rpc.service": "test.Probe",
        "rpc.method": "Echo",
        "rpc.grpc.status_code": 0,
    }
    assert attributes["net.peer.ip"] == "127.0.0.1"
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
    assert span.name == "/test.Probe/Count"
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
    # the instrumentation records the AbortError that carries an abort; it says no more than the
    # status the client got (the failing handler's own exception never reaches it)
    recorded = {dict(e.attributes or {})["exception.message"] for e in span.events}
    assert recorded <= {"Locally aborted."}


async def test_probes_are_not_traced_by_default(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    async with serving(build_server_interceptor(provider)) as server:
        await health(server.channel).Check(health_pb2.HealthCheckRequest())
        await unary(server.channel, "/test.Probe/Echo")(b"hi")
    assert [s.name for s in finished(exporter)] == ["/test.Probe/Echo"]


async def test_without_an_sdk_calls_still_work_and_nothing_is_recorded() -> None:
    async with serving(build_server_interceptor(trace.NoOpTracerProvider())) as server:
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


def test_inject_context_carries_the_current_span(provider: TracerProvider) -> None:
    outside: dict[str, str] = {}
    inject_context(outside)
    assert outside == {}

    headers: dict[str, str] = {}
    with trace.get_tracer("test", tracer_provider=provider).start_as_current_span("call") as span:
        inject_context(headers)
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


def test_no_sdk_when_disabled_or_not_configured(no_otel_env: pytest.MonkeyPatch) -> None:
    assert not is_recording(build_tracer_provider())
    no_otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")
    no_otel_env.setenv("OTEL_SDK_DISABLED", "true")
    assert not is_recording(build_tracer_provider(exporter=InMemorySpanExporter()))
    no_otel_env.delenv("OTEL_SDK_DISABLED")
    no_otel_env.setenv("OTEL_TRACES_EXPORTER", "none")
    assert not is_recording(build_tracer_provider())


@pytest.mark.parametrize(
    ("protocol", "exporter_module"),
    [
        (None, "opentelemetry.exporter.otlp.proto.grpc.trace_exporter"),
        ("grpc", "opentelemetry.exporter.otlp.proto.grpc.trace_exporter"),
        ("http/protobuf", "opentelemetry.exporter.otlp.proto.http.trace_exporter"),
    ],
)
def test_an_otlp_endpoint_turns_export_on_over_either_protocol(
    no_otel_env: pytest.MonkeyPatch, protocol: str | None, exporter_module: str
) -> None:
    no_otel_env.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://127.0.0.1:1")
    if protocol is not None:
        no_otel_env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    provider = build_tracer_provider("llm-proxy")
    assert isinstance(provider, TracerProvider)
    try:
        assert provider.resource.attributes["service.name"] == "llm-proxy"
        processors = provider._active_span_processor._span_processors
        (exporter,) = [p.span_exporter for p in processors]  # type: ignore[attr-defined]
        assert type(exporter).__module__ == exporter_module
    finally:
        provider.shutdown()


def test_otel_service_name_wins(no_otel_env: pytest.MonkeyPatch) -> None:
    no_otel_env.setenv("OTEL_SERVICE_NAME", "proxy-eu")
    provider = build_tracer_provider("llm-proxy", InMemorySpanExporter())
    assert isinstance(provider, TracerProvider)
    assert provider.resource.attributes["service.name"] == "proxy-eu"
    provider.shutdown()


def test_given_exporter_receives_spans(no_otel_env: pytest.MonkeyPatch) -> None:
    exporter = InMemorySpanExporter()
    provider = build_tracer_provider("llm-proxy", exporter)
    assert isinstance(provider, TracerProvider)
    with OtelTracer(provider).span("one"):
        pass
    provider.force_flush()
    assert [s.name for s in exporter.get_finished_spans()] == ["one"]
    provider.shutdown()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("OTEL_TRACES_EXPORTER", "zipkin"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "thrift"),
    ],
)
def test_unsupported_settings_are_config_errors_naming_the_variable(
    no_otel_env: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    no_otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    no_otel_env.setenv(variable, value)
    with pytest.raises(ConfigError, match=variable):
        build_tracer_provider("llm-proxy")


def _otlp_sink() -> Any:
    """benchmarks/otlp_sink.py: the OTLP receiver (gRPC and HTTP) the tracing benchmark uses."""
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "otlp_sink.py"
    spec = importlib.util.spec_from_file_location("otlp_sink", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
async def test_spans_reach_an_otlp_collector_over_either_protocol(
    no_otel_env: pytest.MonkeyPatch, protocol: str
) -> None:
    otlp_sink = _otlp_sink()
    server, grpc_port, sink = await otlp_sink.start_sink()
    runner, http_port = await otlp_sink.start_http_sink(sink)
    port = grpc_port if protocol == "grpc" else http_port
    no_otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
    no_otel_env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    try:
        provider = build_tracer_provider("llm-proxy")
        assert isinstance(provider, TracerProvider)
        with OtelTracer(provider).span("one"), OtelTracer(provider).span("two"):
            pass
        # the exporters block: flush off the loop the receivers run on
        assert await asyncio.to_thread(provider.force_flush, 10_000)
        await asyncio.to_thread(provider.shutdown)
    finally:
        await server.stop(None)
        await runner.cleanup()
    assert (sink.spans, sink.requests) == (2, 1)


class _Refusals:
    def request_refused(self, status: str) -> None:
        pass

    def auth_failure(self, reason: str) -> None:
        pass


@pytest.mark.parametrize("max_concurrent", [0, 1])
async def test_admission_refuses_a_stream_cleanly_under_the_grpc_instrumentation(
    provider: TracerProvider, exporter: InMemorySpanExporter, max_concurrent: int
) -> None:
    """Admission's refusal and in-flight count wrap streams as streams (the instrumentation
    iterates a streaming handler: a coroutine there was an UNKNOWN error, not the refusal)."""
    auth = ClientAuth([("a-tenant", "a-client-token")])
    gate = Gate(auth, Limits(max_concurrent), _Refusals(), FakeClock())
    admission = Admission(gate)
    seen = Seen()
    server = grpc.aio.server(
        interceptors=[build_server_interceptor(provider), admission, ErrorBoundary()]
    )
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "inferenceproxy.Probe",
                {"Count": probe_service_handler(seen)},
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = streaming(channel, "/inferenceproxy.Probe/Count")
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                [m async for m in call(b"")]
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            token = (("authorization", "Bearer a-client-token"),)
            assert len([m async for m in call(b"", metadata=token)]) == CHUNKS
    finally:
        await server.stop(None)
    assert gate.in_flight == 0
    assert [s.name for s in finished(exporter)] == ["/inferenceproxy.Probe/Count"] * 2


def probe_service_handler(seen: Seen) -> Any:
    async def count(
        request: bytes, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        for i in range(CHUNKS):
            seen.note()
            yield str(i).encode()

    return grpc.unary_stream_rpc_method_handler(count)
