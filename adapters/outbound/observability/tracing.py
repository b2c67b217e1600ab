"""OpenTelemetry tracing: the SDK configured from the standard OTEL_* variables, the gRPC server
interceptor and the HTTP client instrumentation from opentelemetry-python-contrib, and the
`Tracer` through which the application adds the spans it owns (inference, attempts, cache).

Tracing on: `opentelemetry-instrumentation-grpc` makes the SERVER span (W3C extraction, status
mapping) and `opentelemetry-instrumentation-httpx` the CLIENT span of each upstream call
(traceparent injection). Tracing off: no SDK, no span; the incoming W3C context is still made
current per RPC (`ContextInterceptor`) and injected into upstream calls (`inject_context`), so
the caller's trace id reaches the upstream and the logs."""

from __future__ import annotations

import logging
import os
import traceback
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import Any, Final, TypeAlias

import grpc
import httpx
from opentelemetry import context, propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
)
from opentelemetry.trace import Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from adapters.process.config_error import ConfigError
from application.ports import AttributeValue, SpanHandle, Tracer

Redact: TypeAlias = Callable[[str], str]

log = logging.getLogger(__name__)

INSTRUMENTATION: Final = "llm_proxy"
# Kubernetes probes call these every few seconds; a span each would drown the real traffic.
DEFAULT_UNTRACED: Final = ("/grpc.health.v1.Health/", "/grpc.reflection.")
# Only W3C trace context travels: baggage a client sent never goes on to a third-party API.
_W3C: Final = TraceContextTextMapPropagator()


# -- set-up ---------------------------------------------------------------------------------


def build_tracer_provider(
    service_name: str = "llm-proxy", exporter: SpanExporter | None = None
) -> trace.TracerProvider:
    """The SDK exporting to `exporter`, or else to what OTEL_* configure: OTLP when
    OTEL_TRACES_EXPORTER=otlp or an OTLP endpoint variable is set (over grpc or http/protobuf,
    per OTEL_EXPORTER_OTLP[_TRACES]_PROTOCOL), `console` or `none` on request. The exporters
    read their endpoint, headers, TLS and timeouts, the SDK sampling (OTEL_TRACES_SAMPLER),
    batching (OTEL_BSP_*) and resource (OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES) from the
    standard variables themselves. The API's no-op provider when nothing is configured or
    OTEL_SDK_DISABLED=true. Call `shutdown()` on an SDK provider at exit to flush. Raises
    ConfigError naming the variable for a value we cannot honour."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return trace.NoOpTracerProvider()
    exporters = [exporter] if exporter is not None else _exporters_from_env()
    if not exporters:
        return trace.NoOpTracerProvider()
    if not os.environ.get("OTEL_PROPAGATORS", "").strip():
        propagate.set_global_textmap(_W3C)  # the default adds baggage, see _W3C
    provider = TracerProvider(resource=_resource(service_name))
    for each in exporters:
        provider.add_span_processor(BatchSpanProcessor(each))
    log.info("tracing: exporting spans with %s", ", ".join(type(e).__name__ for e in exporters))
    return provider


def is_recording(provider: trace.TracerProvider) -> bool:
    return isinstance(provider, TracerProvider)


def _resource(service_name: str) -> Resource:
    detected = Resource.create()  # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win
    if str(detected.attributes.get("service.name", "")).startswith("unknown_service"):
        return detected.merge(Resource({"service.name": service_name}))
    return detected


def _exporters_from_env() -> list[SpanExporter]:
    names = [n.strip().lower() for n in os.environ.get("OTEL_TRACES_EXPORTER", "").split(",")]
    names = [n for n in names if n]
    if not names:
        endpoint_set = any(
            os.environ.get(v, "").strip()
            for v in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        )
        names = ["otlp"] if endpoint_set else []
    exporters: list[SpanExporter] = []
    for name in names:
        if name == "none":
            continue
        if name == "otlp":
            exporters.append(_otlp_exporter())
        elif name == "console":
            exporters.append(ConsoleSpanExporter())
        else:
            raise ConfigError(
                f"OTEL_TRACES_EXPORTER={name!r} is not supported; use otlp, console or none"
            )
    return exporters


def _otlp_exporter() -> SpanExporter:
    """Imported here: each exporter pulls in protobuf code a tracing-off process skips."""
    variable, protocol = "OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"
    for name in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        value = os.environ.get(name, "").strip().lower()
        if value:
            variable, protocol = name, value
            break
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpSpanExporter,
        )

        return HttpSpanExporter()
    raise ConfigError(f"{variable}={protocol!r} is not supported; use grpc or http/protobuf")


# -- incoming gRPC ----------------------------------------------------------------------------


def build_server_interceptor(provider: trace.TracerProvider) -> grpc.aio.ServerInterceptor:
    """First in the server's interceptor list, so the span (or context) covers the others.
    Tracing on: the contrib aio interceptor, probes left out. Tracing off: `ContextInterceptor`."""
    if not is_recording(provider):
        return ContextInterceptor()
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    interceptor: grpc.aio.ServerInterceptor = aio_server_interceptor(  # type: ignore[no-untyped-call]
        tracer_provider=provider, filter_=_traced
    )
    return interceptor


def _traced(details: grpc.HandlerCallDetails) -> bool:
    return not details.method.startswith(DEFAULT_UNTRACED)


class ContextInterceptor(grpc.aio.ServerInterceptor):
    """Makes the caller's trace context (OTEL_PROPAGATORS, W3C `traceparent` by default) current
    for the call, without a span. grpc.aio runs the interceptors and then the handler in one
    task per RPC, so the context attached here is the handler's and ends with the task: no
    handler is rebuilt, which keeps tracing off as cheap as no interceptor at all."""

    async def intercept_service(
        self, continuation: Any, handler_call_details: grpc.HandlerCallDetails
    ) -> Any:
        carrier: dict[str, str] = {}
        for key, value in handler_call_details.invocation_metadata or ():
            if isinstance(value, str):  # `-bin` metadata is bytes and never carries context
                carrier[key] = value
        if carrier:
            context.attach(propagate.extract(carrier))
        return await continuation(handler_call_details)


# -- incoming HTTP (the OpenAI-compatible API) -------------------------------------------------


@contextmanager
def http_server_span(
    provider: trace.TracerProvider, method: str, route: str, headers: Mapping[str, str]
) -> Iterator[Callable[[int], None]]:
    """The caller's W3C context made current for one HTTP request, with a SERVER span when
    tracing is on (HTTP semantic conventions; 5xx is an error). Yields a callback that records
    the response status. Our own span: opentelemetry-instrumentation-aiohttp-server would add a
    dependency for the same few lines."""
    parent = propagate.extract(headers)
    if not is_recording(provider):
        token = context.attach(parent)
        try:
            yield lambda code: None
        finally:
            context.detach(token)
        return
    tracer = provider.get_tracer(INSTRUMENTATION)
    attributes = {"http.request.method": method, "http.route": route}
    with tracer.start_as_current_span(
        f"{method} {route}", context=parent, kind=trace.SpanKind.SERVER, attributes=attributes
    ) as span:

        def record(code: int) -> None:
            span.set_attribute("http.response.status_code", code)
            if code >= 500:
                span.set_status(Status(StatusCode.ERROR))

        yield record


# -- outgoing HTTP ----------------------------------------------------------------------------


def instrument_http_client(
    client: httpx.AsyncClient, provider: trace.TracerProvider | None = None
) -> httpx.AsyncClient:
    """Tracing on: the contrib HTTPX instrumentation (a CLIENT span per call, traceparent of
    that span injected). Tracing off: a request hook that injects the current context."""
    if provider is not None and is_recording(provider):
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

        HTTPXClientInstrumentor.instrument_client(client, tracer_provider=provider)
    else:
        client.event_hooks["request"].append(_inject_hook)
    return client


async def _inject_hook(request: httpx.Request) -> None:
    inject_context(request.headers)


def inject_context(headers: MutableMapping[str, str]) -> None:
    """Adds `traceparent` (and `tracestate`) of the current span or remote context, if any."""
    _W3C.inject(headers)


# -- the application's Tracer ---------------------------------------------------------------


def build_tracer(provider: trace.TracerProvider, redact: Redact = str) -> Tracer:
    """The application's spans on the SDK; with tracing off a tracer that costs nothing."""
    return OtelTracer(provider, redact=redact) if is_recording(provider) else NullTracer()


class OtelTracer(Tracer):
    """Spans from `provider`, or from OpenTelemetry's global provider when none is given."""

    def __init__(
        self,
        provider: trace.TracerProvider | None = None,
        name: str = INSTRUMENTATION,
        redact: Redact = str,
    ) -> None:
        self._tracer = trace.get_tracer(name, tracer_provider=provider)
        self._redact = redact

    @contextmanager
    def span(
        self, name: str, attributes: Mapping[str, AttributeValue] | None = None
    ) -> Iterator[SpanHandle]:
        with self._tracer.start_as_current_span(name, attributes=attributes) as span:
            yield _OtelSpan(span, self._redact)


class _OtelSpan(SpanHandle):
    __slots__ = ("_redact", "_span")

    def __init__(self, span: trace.Span, redact: Redact = str) -> None:
        self._span = span
        self._redact = redact

    def set(self, key: str, value: AttributeValue) -> None:
        self._span.set_attribute(key, value)

    def event(self, name: str, attributes: Mapping[str, AttributeValue] | None = None) -> None:
        self._span.add_event(name, attributes)

    def error(self, exc: BaseException) -> None:
        record_exception(self._span, exc, self._redact)
        self._span.set_status(Status(StatusCode.ERROR, type(exc).__name__))


class NullTracer(Tracer):
    """Records nothing and costs next to nothing."""

    @contextmanager
    def span(
        self, name: str, attributes: Mapping[str, AttributeValue] | None = None
    ) -> Iterator[SpanHandle]:
        yield _NULL_SPAN


class _NullSpan(SpanHandle):
    __slots__ = ()

    def set(self, key: str, value: AttributeValue) -> None:
        pass

    def event(self, name: str, attributes: Mapping[str, AttributeValue] | None = None) -> None:
        pass

    def error(self, exc: BaseException) -> None:
        pass


_NULL_SPAN: Final = _NullSpan()


def record_exception(span: trace.Span, exc: BaseException, redact: Redact) -> None:
    """The exception event with its message and stack trace passed through `redact`: an error
    can quote a URL with a password or a key, and spans leave the process."""
    stacktrace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    span.record_exception(
        exc,
        attributes={
            "exception.message": redact(str(exc)),
            "exception.stacktrace": redact(stacktrace),
        },
    )
