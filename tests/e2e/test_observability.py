"""Metrics, traces, logs and health of the running proxy (real gRPC -> proxy -> simulator)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from adapters.inbound.grpc.generated import proxy_pb2 as pb
from simulator import SimulatorConfig
from tests.containers import RedisServer, disposable_redis  # noqa: F401
from tests.harness import (
    GEMINI_KEYS,
    OPENAI_KEYS,
    SLACK,
    Samples,
    Stack,
    remote_cache,
    scrape,
    stack,
)

PROMPT = "What is the capital of France?"
PARAPHRASE = "What's the capital of France?"


def ask(prompt: str, model: str = "gpt-4o-mini", **kw: Any) -> pb.InferenceRequest:
    return pb.InferenceRequest(model=model, prompt=prompt, **kw)


async def get(s: Stack, path: str) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.get(f"http://127.0.0.1:{s.proxy.metrics_port}{path}")


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def failure(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def test_metrics_after_a_scripted_sequence(tmp_path: Path) -> None:
    limited = SimulatorConfig(rate_limited_keys={OPENAI_KEYS[0]}, retry_after_s=60)
    async with stack(
        limited,
        cache_mode="embedded",
        cache_dir=str(tmp_path),
        cb_failure_threshold=2,
        cb_cooldown="60s",  # the gemini breaker must still read open when scraped, under load too
        max_retries=1,
        **SLACK,
    ) as s:
        miss = await s.stub.Infer(ask(PROMPT))  # the first key is limited: rotation
        await s.proxy.container.inference().drain()
        exact = await s.stub.Infer(ask(PROMPT))
        semantic = await s.stub.Infer(ask(PARAPHRASE))
        streamed = [c async for c in s.stub.InferStream(ask("Name a colour.", "gemini-2.0-flash"))]
        for _ in range(2):  # two 503s open the gemini breaker; the next call fails fast
            await failure(s.stub.Infer(ask("down [[sim:503]]", "gemini-2.0-flash")))
        samples = await scrape(s)

    assert (exact.cache.status, semantic.cache.status) == (
        pb.CACHE_STATUS_EXACT,
        pb.CACHE_STATUS_SEMANTIC,
    )
    assert value(samples, "requests_total", status="ok") == 4
    assert value(samples, "requests_total", status="unavailable") == 2
    latency = "request_latency_seconds_count"
    openai = {"provider": "openai", "model": "gpt-4o-mini"}
    assert value(samples, latency, cache_status="miss", **openai) == 1
    assert value(samples, latency, cache_status="exact", **openai) == 1
    assert value(samples, latency, cache_status="semantic", **openai) == 1
    gemini = {"provider": "gemini", "model": "gemini-2.0-flash"}
    assert value(samples, latency, cache_status="miss", **gemini) == 3  # stream + 2 failures
    # tokens are counted for upstream answers only, not for answers from the cache
    assert (
        value(samples, "token_usage_total", direction="input", **openai) == miss.usage.input_tokens
    )
    assert (
        value(samples, "token_usage_total", direction="output", **openai)
        == miss.usage.output_tokens
    )
    assert (
        value(samples, "token_usage_total", direction="output", **gemini)
        == streamed[-1].usage.output_tokens
    )
    assert value(samples, "cache_lookups_total") == 6
    assert value(samples, "cache_hits_total") == 2
    assert value(samples, "cache_hit_ratio") == pytest.approx(2 / 6)
    assert value(samples, "cache_hit_similarity_count") == 1
    assert value(samples, "circuit_breaker_state", provider="gemini") == 1
    assert value(samples, "circuit_breaker_state", provider="openai") == 0
    attempts = "upstream_attempts_total"
    assert value(samples, attempts, provider="openai", outcome="rate_limited") == 1
    assert value(samples, attempts, provider="openai", outcome="success") == 1
    assert value(samples, attempts, provider="gemini", outcome="upstream_fault") == 2
    assert value(samples, "key_pool_keys", provider="openai", state="cooling_down") == 1
    assert value(samples, "key_pool_keys", provider="openai", state="usable") == 1
    assert value(samples, "active_requests") == 0
    text = repr(samples)
    for secret in (*OPENAI_KEYS, *GEMINI_KEYS):
        assert secret not in text
    assert "capital" not in text


async def test_invented_model_names_create_no_new_series() -> None:
    async with stack(cache_mode="off") as s:
        for i in range(150):
            await s.stub.Infer(ask("hi", model=f"gpt-invented-{i}"))
        samples = await scrape(s)
    models = {dict(labels).get("model") for (name, labels) in samples if name == "requests_total"}
    latency_models = {
        dict(labels)["model"]
        for (name, labels) in samples
        if name == "request_latency_seconds_count"
    }
    assert len(latency_models) <= 64 + 1
    assert "other" in latency_models
    assert models == {None}


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


def traced(exporter: InMemorySpanExporter) -> dict[str, Any]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return {"tracer_provider": provider}


TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


async def test_span_tree_continues_the_callers_trace(
    exporter: InMemorySpanExporter, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with stack(
        overrides=traced(exporter),
        cache_mode="embedded",
        cache_dir=str(tmp_path),
        **SLACK,
    ) as s:
        await s.stub.Infer(
            ask("a private question [[sim:503*1]]", temperature=0.5, max_tokens=100),
            metadata=(("traceparent", TRACEPARENT),),
        )
        await s.proxy.container.inference().drain()
    spans = exporter.get_finished_spans()
    by_name: dict[str, list[ReadableSpan]] = {}
    for span in spans:
        by_name.setdefault(span.name, []).append(span)
    (server,) = by_name["/inferenceproxy.InferenceService/Infer"]
    assert format(server.context.trace_id, "032x") == TRACE_ID
    assert server.parent is not None
    assert format(server.parent.span_id, "016x") == "00f067aa0ba902b7"
    (request,) = by_name["inference"]
    assert request.parent.span_id == server.context.span_id
    attempts = by_name["chat gpt-4o-mini"]
    assert len(attempts) == 2  # a 503, then the answer
    assert all(a.parent.span_id == request.context.span_id for a in attempts)
    # each attempt's HTTP call is a CLIENT span of the httpx instrumentation, under the attempt
    calls = [sp for sp in spans if sp.kind is SpanKind.CLIENT]
    assert sorted(c.parent.span_id for c in calls) == sorted(a.context.span_id for a in attempts)
    ok = attempts[-1].attributes
    assert ok["gen_ai.system"] == "openai"
    assert ok["gen_ai.request.model"] == "gpt-4o-mini"
    assert ok["gen_ai.request.temperature"] == 0.5
    assert ok["gen_ai.request.max_tokens"] == 100
    assert ok["gen_ai.usage.output_tokens"] > 0
    assert ok["gen_ai.response.finish_reasons"] == "stop"
    assert [e.name for e in request.events] == ["retry"]
    (lookup,) = by_name["cache.lookup"]
    assert lookup.parent.span_id == request.context.span_id
    for child in ("cache.embedder.embed", "cache.vector_index.search", "cache.response_store.get"):
        assert by_name[child][0].context.trace_id == server.context.trace_id
    assert "cache.store" in by_name
    everything = json.dumps(
        [
            {
                "a": dict(sp.attributes or {}),
                "e": [(e.name, dict(e.attributes or {})) for e in sp.events],
            }
            for sp in spans
        ],
        default=str,
    )
    for secret in ("private question", *OPENAI_KEYS, *GEMINI_KEYS):
        assert secret not in everything
        assert secret not in caplog.text
    assert "request ok gpt-4o-mini miss" in caplog.text


async def test_readyz_reports_redis_down_but_stays_ready(
    tmp_path: Path,
    disposable_redis: RedisServer,  # noqa: F811
) -> None:
    async with stack(**remote_cache(tmp_path, disposable_redis.addr, "ready")) as s:
        await s.stub.Infer(ask(PROMPT))
        ready = await get(s, "/readyz")
        assert ready.status_code == 200
        assert ready.json()["backends"]["response_store"] == "up"

        disposable_redis.stop()
        await s.stub.Infer(ask("another question"))
        down = await get(s, "/readyz")
        assert down.status_code == 200  # the cache fails open: still ready
        assert down.json()["backends"]["response_store"] == "down"

        disposable_redis.start()
        await s.stub.Infer(ask("a third question"))
        back = await get(s, "/readyz")
        assert back.status_code == 200
        assert back.json()["backends"]["response_store"] == "up"
        assert (await get(s, "/healthz")).status_code == 200
