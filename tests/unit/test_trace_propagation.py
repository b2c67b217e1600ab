from __future__ import annotations

import httpx
from opentelemetry.sdk.trace import TracerProvider

from adapters.providers import _propagate_trace, http_client


async def test_outgoing_http_carries_the_current_traceparent() -> None:
    tracer = TracerProvider().get_tracer("test")
    async with http_client("http://127.0.0.1:9") as client:
        assert _propagate_trace in client.event_hooks["request"]
    request = httpx.Request("POST", "http://127.0.0.1:9/v1/chat/completions")
    with tracer.start_as_current_span("attempt") as span:
        await _propagate_trace(request)
    trace_id = format(span.get_span_context().trace_id, "032x")
    assert request.headers["traceparent"].split("-")[1] == trace_id


async def test_no_traceparent_outside_a_span() -> None:
    request = httpx.Request("POST", "http://127.0.0.1:9/v1/chat/completions")
    await _propagate_trace(request)
    assert "traceparent" not in request.headers
