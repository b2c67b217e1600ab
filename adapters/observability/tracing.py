"""OpenTelemetry tracing: provider set-up from the standard OTEL_* variables, a server span per
gRPC call, the `Tracer` the application will use, and W3C context for outgoing HTTP.

When tracing is off no SDK is installed: spans come from the API's no-op tracer, which only
carries an incoming trace context along (no recording, no export)."""

from __future__ import annotations

import inspect
import logging
import os
import traceback
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Iterator,
    Mapping,
    MutableMapping,
    Sequence,
)
from contextlib import contextmanager
from typing import Any, Final, TypeAlias

import grpc
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
)
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from application.ports import AttributeValue, SpanHandle, Tracer

Redact: TypeAlias = Callable[[str], str]

log = logging.getLogger(__name__)

INSTRUMENTATION: Final = "llm_proxy"
# Kubernetes probes call these every few seconds; a span each would drown the real traffic.
DEFAULT_UNTRACED: Final = ("/grpc.health.v1.Health/", "/grpc.reflection.")
# Server spans are errors only for codes that say the server failed (OTel RPC conventions).
_SERVER_ERRORS: Final = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


# -- set-up ---------------------------------------------------------------------------------


def setup_tracing(
    service_name: str,
    enabled: bool,
    exporter: SpanExporter | None = None,
    *,
    set_global: bool = True,
) -> TracerProvider | None:
    """A TracerProvider exporting to `exporter`, or else to what the OTEL_* variables configure:
    OTLP/gRPC when OTEL_TRACES_EXPORTER=otlp or an OTLP endpoint variable is set, `console` or
    `none` on request. None (and nothing installed) when disabled or nothing is configured.
    Sampling (OTEL_TRACES_SAMPLER), batching (OTEL_BSP_*), resource attributes and the OTLP
    endpoint, headers and TLS come from the standard variables. Call `shutdown()` on the
    provider at exit to flush. Raises ValueError naming the variable for a setting we cannot
    honour."""
    if not enabled or _env_flag("OTEL_SDK_DISABLED"):
        return None
    exporters = [exporter] if exporter is not None else _exporters_from_env()
    if not exporters:
        log.info("tracing: no exporter configured (OTEL_EXPORTER_OTLP_ENDPOINT); spans not kept")
        return None
    provider = TracerProvider(resource=_resource(service_name))
    for each in exporters:
        provider.add_span_processor(BatchSpanProcessor(each))
    if set_global:
        trace.set_tracer_provider(provider)
    log.info("tracing: exporting spans with %s", ", ".join(type(e).__name__ for e in exporters))
    return provider


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
            raise ValueError(
                f"OTEL_TRACES_EXPORTER={name!r} is not supported; use otlp, console or none"
            )
    return exporters


def _otlp_exporter() -> SpanExporter:
    for variable in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        protocol = os.environ.get(variable, "").strip().lower()
        if protocol and protocol != "grpc":
            raise ValueError(f"{variable}={protocol!r} is not supported; only grpc is installed")
        if protocol:
            break
    # imported here: the gRPC exporter pulls in protobuf code that a tracing-off process skips
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() == "true"


# -- the application's Tracer ---------------------------------------------------------------


class OtelTracer(Tracer):
    """Spans from `provider`, or from the global provider (the no-op one until
    `setup_tracing` installs the SDK; a tracer taken before that follows it)."""

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


# -- outgoing HTTP ----------------------------------------------------------------------------

_W3C: Final = TraceContextTextMapPropagator()


def inject_traceparent(headers: MutableMapping[str, str]) -> None:
    """Adds `traceparent` (and `tracestate`) for the current span, if there is one. Only W3C
    trace context: baggage a client sent never travels on to a third-party API."""
    _W3C.inject(headers)


# -- incoming gRPC ----------------------------------------------------------------------------

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Continuation: TypeAlias = Callable[[grpc.HandlerCallDetails], Awaitable["Handler | None"]]


class TracingInterceptor(grpc.aio.ServerInterceptor):
    """A SERVER span per RPC named `package.Service/Method`, continuing the trace context in the
    call's metadata (OTEL_PROPAGATORS, W3C `traceparent` by default), current while the handler
    runs, ended when the response (or the whole stream) is sent. Put it first in the server's
    interceptor list so the span covers the others."""

    def __init__(
        self,
        provider: trace.TracerProvider | None = None,
        untraced: Collection[str] = DEFAULT_UNTRACED,
        redact: Redact = str,
    ) -> None:
        self._tracer = trace.get_tracer(INSTRUMENTATION, tracer_provider=provider)
        self._untraced = tuple(untraced)
        self._redact = redact

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(self._untraced):
            return handler
        metadata = handler_call_details.invocation_metadata or ()
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, method, metadata),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._streaming(handler.unary_stream, method, metadata),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler  # client streaming is not part of our API

    def _unary(self, behaviour: Any, method: str, metadata: Sequence[Any]) -> Any:
        async def traced(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            with self._server_span(method, metadata, context) as span:
                try:
                    response = await behaviour(request, context)
                except BaseException as exc:
                    _finish(span, context, exc, self._redact)
                    raise
                _finish(span, context, None, self._redact)
                return response

        return traced

    def _streaming(self, behaviour: Any, method: str, metadata: Sequence[Any]) -> Any:
        async def traced(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            with self._server_span(method, metadata, context) as span:
                responses = behaviour(request, context)
                try:
                    if inspect.isawaitable(responses):  # a handler that uses context.write()
                        await responses
                    else:
                        async for response in responses:
                            yield response
                except BaseException as exc:
                    _finish(span, context, exc, self._redact)
                    raise
                finally:
                    if inspect.isasyncgen(responses):
                        await responses.aclose()
                _finish(span, context, None, self._redact)

        return traced

    @contextmanager
    def _server_span(
        self, method: str, metadata: Sequence[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> Iterator[trace.Span]:
        name = method.lstrip("/")
        service, _, rpc_method = name.rpartition("/")
        attributes: dict[str, AttributeValue] = {
            "rpc.system": "grpc",
            "rpc.service": service,
            "rpc.method": rpc_method,
            **_peer_attributes(context),
        }
        with self._tracer.start_as_current_span(
            name,
            context=propagate.extract(_carrier(metadata)),
            kind=SpanKind.SERVER,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            yield span


def _carrier(metadata: Sequence[Any]) -> dict[str, list[str]]:
    carrier: dict[str, list[str]] = {}
    for key, value in metadata:
        if isinstance(value, str):  # `-bin` metadata is bytes and never carries trace context
            carrier.setdefault(key.lower(), []).append(value)
    return carrier


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


def _finish(
    span: trace.Span,
    context: grpc.aio.ServicerContext[Any, Any],
    exc: BaseException | None,
    redact: Redact,
) -> None:
    code = _status_code(context, exc)
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if isinstance(exc, Exception) and not isinstance(exc, grpc.aio.AbortError):
        record_exception(span, exc, redact)
    if code in _SERVER_ERRORS:
        span.set_status(Status(StatusCode.ERROR, code.name))


def _status_code(
    context: grpc.aio.ServicerContext[Any, Any], exc: BaseException | None
) -> grpc.StatusCode:
    code: grpc.StatusCode | None = context.code()
    if code is not None:
        return code
    if exc is None:
        return grpc.StatusCode.OK
    if isinstance(exc, Exception):
        return grpc.StatusCode.UNKNOWN  # what grpc answers for an exception nobody handled
    # cancelled: the deadline passed, or the client went away
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return grpc.StatusCode.CANCELLED


def _peer_attributes(context: grpc.aio.ServicerContext[Any, Any]) -> dict[str, AttributeValue]:
    """`ipv4:10.0.0.7:51234` or `ipv6:[::1]:51234` -> network.peer.address / .port."""
    try:
        peer = context.peer()
    except Exception:
        return {}
    kind, _, address = (peer or "").partition(":")
    if kind not in ("ipv4", "ipv6"):
        return {}
    host, _, port = address.rpartition(":")
    attributes: dict[str, AttributeValue] = {"network.peer.address": host.strip("[]")}
    if port.isdigit():
        attributes["network.peer.port"] = int(port)
    return attributes
