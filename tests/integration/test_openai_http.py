"""The OpenAI-compatible HTTP API through the official `openai` SDK: the real proxy (container,
aiohttp listener on an ephemeral loopback port) in front of the upstream simulator, for both
providers. Faults come from `[[sim:...]]` prompt markers (docs/simulator.md)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import openai
import pytest
from aiohttp import web
from dependency_injector import providers
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from adapters.inbound.drain import Drain
from adapters.inbound.grpc.generated import proxy_pb2 as pb
from adapters.inbound.grpc.generated import proxy_pb2_grpc as pb_grpc
from adapters.inbound.http.app import CACHE_CONTROL_HEADER as CACHE_CONTROL
from adapters.inbound.http.server import HttpServer
from adapters.process.settings import load_settings
from cli import serve
from container import Container
from tests.fakes import FakeProvider
from tests.harness import FAST, SLACK, Stack, scrape, stack

OPENAI, GEMINI = "gpt-4o-mini", "gemini-2.0-flash"
MODELS = (OPENAI, GEMINI)
TOKEN = "tok-http-client-1"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


def client(s: Stack, key: str = "unused", **kw: Any) -> openai.AsyncOpenAI:
    # max_retries=0: the SDK retries 429 and 5xx itself; the tests look at one answer each
    return openai.AsyncOpenAI(base_url=s.proxy.http_url, api_key=key, max_retries=0, **kw)


def user(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


@pytest.fixture
async def s() -> AsyncIterator[Stack]:
    async with stack(http=True) as running:
        yield running


@pytest.mark.parametrize("model", MODELS)
async def test_chat_answers_in_openai_shape_for_both_providers(s: Stack, model: str) -> None:
    raw = await client(s).chat.completions.with_raw_response.create(
        model=model,
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Explain goroutines."}]},
        ],
        temperature=0.2,
        max_tokens=50,
    )
    completion = raw.parse()
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert completion.model == model  # the model that answered
    [choice] = completion.choices
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.message.content.startswith("sim-")
    assert choice.finish_reason == "stop"
    usage = completion.usage
    assert usage is not None
    assert usage.prompt_tokens > 0
    assert usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert raw.headers["x-llm-proxy-cache"] == "bypass"  # CACHE_MODE=off in the harness
    assert raw.headers["x-llm-proxy-provider"] == ("gemini" if model == GEMINI else "openai")


@pytest.mark.parametrize("model", MODELS)
async def test_a_stream_is_openai_chunks_with_usage_then_done(s: Stack, model: str) -> None:
    prompt = user("Explain channels.")
    unary = await client(s).chat.completions.create(model=model, messages=prompt)
    stream = await client(s).chat.completions.create(
        model=model, messages=prompt, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == unary.choices[0].message.content
    finish, usage = chunks[-2], chunks[-1]
    assert finish.choices[0].finish_reason == "stop"
    assert finish.model == model
    assert finish.model_extra is not None
    assert finish.model_extra["llm_proxy"]["provider"] == (
        "gemini" if model == GEMINI else "openai"
    )
    assert usage.choices == []
    assert usage.usage is not None
    assert usage.usage == unary.usage


async def test_a_stream_without_include_usage_has_no_usage_chunk(s: Stack) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{s.proxy.http_url}/chat/completions",
            json={"model": OPENAI, "messages": user("Hello there."), "stream": True},
        )
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [line for line in response.text.split("\n\n") if line]
    assert events[-1] == "data: [DONE]"
    assert '"finish_reason":"stop"' in events[-2]
    assert all('"choices":[]' not in e for e in events)


async def test_models_lists_aliases_and_the_providers_own_chat_models_never_patterns() -> None:
    async with stack(
        http=True,
        model_routes="fast=gemini:gemini-2.0-flash",
        model_fallbacks="gpt-4.1=gemini-2.5-flash",
    ) as s:
        models = await client(s).models.list()
        again = await client(s).models.list()
        asked = s.sim.stats.by_endpoint
    owners = {m.id: m.owned_by for m in models.data}
    # the simulator's lists (DEFAULT_MODELS), embedding models included (POST /v1/embeddings)
    assert owners == {
        "fast": "gemini",
        "gpt-4.1": "openai",
        "gpt-4o": "openai",
        "gpt-4o-mini": "openai",
        "text-embedding-3-small": "openai",
        "text-embedding-3-large": "openai",
        "gemini-2.0-flash": "gemini",
        "gemini-2.5-flash": "gemini",
        "text-embedding-004": "gemini",
        "claude-haiku-4-5": "anthropic",
        "claude-opus-4-1": "anthropic",
        "claude-sonnet-4-5": "anthropic",
    }
    assert all(m.created > 0 for m in models.data)
    assert [m.id for m in again.data] == [m.id for m in models.data]
    assert asked["openai.models"] == asked["gemini.models"] == asked["anthropic.models"] == 1


async def test_models_retrieve_answers_a_listed_model_and_404s_an_unknown_one(s: Stack) -> None:
    model = await client(s).models.retrieve("gpt-4o-mini")
    assert (model.id, model.owned_by, model.object) == ("gpt-4o-mini", "openai", "model")
    with pytest.raises(openai.NotFoundError) as caught:
        await client(s).models.retrieve("gpt-4-nonexistent")
    assert caught.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        await client(s).models.retrieve("llama-3")


async def test_a_pattern_is_not_a_model_name(s: Stack) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await client(s).chat.completions.create(model="gpt-*", messages=user("Hi."))
    assert "a pattern of model names" in caught.value.message
    assert caught.value.param == "model"


# -- errors: the status each SDK exception class stands for --------------------------------


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"n": 2}, "n must be 1"),
        ({"temperature": 3}, "temperature must be within [0, 2]"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "unsupported parameter"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "part type(s) image_url",
        ),
        ({"messages": [{"role": "tool", "content": "x"}]}, "role must be"),
    ],
)
async def test_bad_requests_are_400_saying_what_to_fix(
    s: Stack, body: dict[str, Any], says: str
) -> None:
    request = {"model": OPENAI, "messages": user("Hi."), **body}
    with pytest.raises(openai.BadRequestError) as error:
        await client(s).chat.completions.create(**request)
    assert error.value.status_code == 400
    assert says in error.value.message
    assert error.value.type == "invalid_request_error"


async def test_malformed_json_and_unknown_fields(s: Stack) -> None:
    url = f"{s.proxy.http_url}/chat/completions"
    async with httpx.AsyncClient() as http:
        malformed = await http.post(
            url, content=b"{not json", headers={"Content-Type": "application/json"}
        )
        missing = await http.post(url, json={"messages": user("Hi.")})
        ignored = await http.post(
            url, json={"model": OPENAI, "messages": user("Hi."), "top_p": 0.5, "user": "u-1"}
        )
    assert malformed.status_code == 400
    assert "not valid JSON" in malformed.json()["error"]["message"]
    assert missing.status_code == 400
    assert missing.json()["error"]["param"] == "model"
    assert ignored.status_code == 200  # unknown or unused fields are ignored (README)


async def test_a_body_over_max_request_bytes_is_refused() -> None:
    async with stack(http=True, max_request_bytes=2048) as s:
        with pytest.raises(openai.APIStatusError) as error:
            await client(s).chat.completions.create(model=OPENAI, messages=user("x" * 4096))
    assert error.value.status_code == 413
    assert "MAX_REQUEST_BYTES" in error.value.message


async def test_a_missing_or_wrong_token_is_401_and_counted() -> None:
    async with stack(http=True, auth_tokens=TOKEN) as s:
        with pytest.raises(openai.AuthenticationError) as wrong:
            await client(s, key="tok-wrong").chat.completions.create(
                model=OPENAI, messages=user("Hi.")
            )
        with pytest.raises(openai.AuthenticationError):
            await client(s, key="tok-wrong").models.list()
        ok = await client(s, key=TOKEN).chat.completions.create(model=OPENAI, messages=user("Hi."))
        samples = await scrape(s)
    assert wrong.value.status_code == 401
    assert "invalid token" in wrong.value.message
    assert TOKEN not in wrong.value.message
    assert ok.choices[0].message.content
    assert samples[("auth_failures_total", (("reason", "invalid"),))] == 2


async def test_an_unknown_model_is_404_naming_the_routable_ones(s: Stack) -> None:
    with pytest.raises(openai.NotFoundError) as error:
        await client(s).chat.completions.create(model="llama-3", messages=user("Hi."))
    assert error.value.code == "model_not_found"
    assert "gpt-*" in error.value.message
    assert "gemini-*" in error.value.message


@pytest.mark.parametrize("model", MODELS)
async def test_rate_limited_upstream_keys_are_429_with_retry_after(s: Stack, model: str) -> None:
    with pytest.raises(openai.RateLimitError) as error:
        await client(s).chat.completions.create(model=model, messages=user("Busy. [[sim:429:30]]"))
    retry_after = int(error.value.response.headers["retry-after"])
    assert 25 <= retry_after <= 31


async def test_a_tenant_over_its_rate_is_429_with_retry_after() -> None:
    async with stack(http=True, tenant_rate_limit=0.5) as s:
        await client(s).chat.completions.create(model=OPENAI, messages=user("One."))
        with pytest.raises(openai.RateLimitError) as error:
            await client(s).chat.completions.create(model=OPENAI, messages=user("Two."))
    assert "TENANT_RATE_LIMIT" in error.value.message
    assert int(error.value.response.headers["retry-after"]) in (1, 2)


@pytest.mark.parametrize("model", MODELS)
async def test_an_upstream_that_stays_down_is_503(model: str) -> None:
    async with stack(http=True, max_retries=1) as s:
        with pytest.raises(openai.InternalServerError) as error:
            await client(s).chat.completions.create(
                model=model, messages=user("Broken. [[sim:503]]")
            )
    assert error.value.status_code == 503
    assert "unavailable after 2 attempts" in error.value.message
    assert "sim" not in error.value.message.split(":", 1)[0]  # no upstream body passed through


async def test_the_deadline_is_504_and_a_stream_failure_before_content_has_its_status() -> None:
    async with stack(http=True, request_timeout="1s", max_retries=0) as s:
        with pytest.raises(openai.InternalServerError) as unary:
            await client(s).chat.completions.create(
                model=GEMINI, messages=user("Hang. [[sim:stall]]")
            )
        with pytest.raises(openai.InternalServerError) as streamed:
            await client(s).chat.completions.create(
                model=OPENAI, messages=user("Hang. [[sim:stall:0]]"), stream=True
            )
    assert unary.value.status_code == 504
    assert streamed.value.status_code == 504


async def test_a_timeout_header_is_the_clients_deadline(s: Stack) -> None:
    sdk = client(s).chat.completions
    with pytest.raises(openai.InternalServerError) as error:
        await sdk.create(
            model=OPENAI, messages=user("Hang. [[sim:stall]]"),
            extra_headers={"x-llm-proxy-timeout": "0.5"},
        )  # fmt: skip
    with pytest.raises(openai.BadRequestError) as bad:
        await sdk.create(
            model=OPENAI, messages=user("Hi."), extra_headers={"x-llm-proxy-timeout": "soon"}
        )
    assert error.value.status_code == 504  # REQUEST_TIMEOUT is 30 s
    assert "x-llm-proxy-timeout" in bad.value.message


async def test_a_failure_mid_stream_is_an_error_event_not_a_silent_end(s: Stack) -> None:
    stream = await client(s).chat.completions.create(
        model=OPENAI, messages=user("Explain goroutines. [[sim:midstream:2]]"), stream=True
    )
    chunks: list[Any] = []

    async def read() -> None:
        async for chunk in stream:
            chunks.append(chunk)

    with pytest.raises(openai.APIError) as error:
        await read()
    assert len(chunks) >= 2  # the role chunk and content came first
    assert error.value.type == "api_error"  # unavailable: how an UpstreamFault is classified


async def test_a_client_leaving_mid_stream_cancels_the_upstream_call(s: Stack) -> None:
    stream = await client(s).chat.completions.create(
        model=GEMINI, messages=user("Hang after two. [[sim:stall:2]]"), stream=True
    )
    seen = 0
    async for chunk in stream:
        seen += bool(chunk.choices and chunk.choices[0].delta.content)
        if seen == 2:
            break
    await stream.close()
    # the simulator saw the proxy close the upstream stream, long before its 300 s stall ends
    left = await s.sim.stats.wait_until(
        lambda st: st.client_disconnects == 1 and st.in_flight == 0, within_s=5
    )
    samples = await scrape(s)
    assert left
    assert samples[("requests_total", (("status", "cancelled"),))] == 1


async def test_http_requests_are_counted_by_route_and_status_and_in_requests_total(
    s: Stack,
) -> None:
    await client(s).chat.completions.create(model=OPENAI, messages=user("Count me."))
    with pytest.raises(openai.NotFoundError):
        await client(s).chat.completions.create(model="llama-3", messages=user("Hi."))
    await client(s).models.list()
    samples = await scrape(s)
    chat = "/v1/chat/completions"
    assert samples[("http_requests_total", (("code", "200"), ("route", chat)))] == 1
    assert samples[("http_requests_total", (("code", "404"), ("route", chat)))] == 1
    assert samples[("http_requests_total", (("code", "200"), ("route", "/v1/models")))] == 1
    assert samples[("requests_total", (("status", "ok"),))] == 1
    assert samples[("requests_total", (("status", "not_found"),))] == 1


async def test_an_unknown_path_is_a_404_in_openai_error_shape(s: Stack) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.post(f"{s.proxy.http_url}/completions", json={})
    assert response.status_code == 404
    assert "POST /v1/chat/completions" in response.json()["error"]["message"]


async def test_http_port_0_serves_no_http() -> None:
    async with stack() as s:  # the harness sets HTTP_PORT=0
        assert s.proxy.container.http_server() is None
        assert s.proxy.http_port == 0
        await asyncio.sleep(0)


# -- cache, tenants, traces -----------------------------------------------------------------


async def test_cache_status_in_headers_per_tenant_and_cache_control(tmp_path: Path) -> None:
    other = "tok-http-client-2"
    async with stack(
        http=True, cache_mode="embedded", cache_dir=str(tmp_path), auth_tokens=f"{TOKEN},{other}",
        **SLACK,
    ) as s:  # fmt: skip
        chat = client(s, key=TOKEN).chat.completions.with_raw_response
        prompt = user("What is a goroutine?")
        first = await chat.create(model=OPENAI, messages=prompt)
        await s.proxy.container.inference().drain()  # the store runs in the background
        again = await chat.create(model=OPENAI, messages=prompt)
        skipped = await client(s, key=TOKEN).chat.completions.with_raw_response.create(
            model=OPENAI, messages=prompt, extra_headers={CACHE_CONTROL: "no-lookup"}
        )
        elsewhere = await client(s, key=other).chat.completions.with_raw_response.create(
            model=OPENAI, messages=prompt
        )
        stream = await client(s, key=TOKEN).chat.completions.create(
            model=OPENAI, messages=prompt, stream=True
        )
        chunks = [c async for c in stream]
        with pytest.raises(openai.BadRequestError) as bad:
            await client(s, key=TOKEN).chat.completions.create(
                model=OPENAI, messages=prompt, extra_headers={CACHE_CONTROL: "no-thanks"}
            )
    assert first.headers["x-llm-proxy-cache"] == "miss"
    assert again.headers["x-llm-proxy-cache"] == "exact"
    assert again.parse().choices[0].message.content == first.parse().choices[0].message.content
    assert skipped.headers["x-llm-proxy-cache"] == "bypass"
    assert elsewhere.headers["x-llm-proxy-cache"] == "miss"  # another token, another tenant
    assert chunks[-1].model_extra is not None
    assert chunks[-1].model_extra["llm_proxy"]["cache"] == "exact"
    assert "no-thanks" in bad.value.message


async def test_a_server_span_continues_the_callers_trace_and_the_request_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    async with stack(http=True, overrides={"tracer_provider": provider}) as s:
        await client(s).chat.completions.create(
            model=GEMINI, messages=user("Trace me."), extra_headers={"traceparent": TRACEPARENT}
        )
    spans = {span.name: span for span in exporter.get_finished_spans()}
    server = spans["POST /v1/chat/completions"]
    assert server.kind is SpanKind.SERVER
    assert format(server.context.trace_id, "032x") == TRACE_ID
    assert server.parent is not None
    assert format(server.parent.span_id, "016x") == "00f067aa0ba902b7"
    assert server.attributes is not None
    assert server.attributes["http.response.status_code"] == 200
    inference = spans["inference"]
    assert inference.parent is not None
    assert inference.parent.span_id == server.context.span_id
    [line] = [r for r in caplog.records if r.getMessage().startswith("request ok")]
    assert line.getMessage().startswith("request ok gemini-2.0-flash bypass")
    assert line.__dict__["protocol"] == "http"
    assert line.__dict__["provider"] == "gemini"


async def test_shutdown_stops_both_listeners_then_lets_a_request_in_flight_finish() -> None:
    container = Container(settings=load_settings(**FAST))
    fake = FakeProvider("openai")
    fake.gate = asyncio.Event()
    container.provider_adapters.override(providers.Object({"openai": fake}))
    container.http_server.override(
        providers.Singleton(HttpServer, container.openai_api, "127.0.0.1", 0)
    )
    stop = asyncio.Event()
    serving = asyncio.create_task(serve(container, stop))
    server = container.http_server()
    for _ in range(1000):
        if server.port:
            break
        await asyncio.sleep(0.01)
    url = f"http://127.0.0.1:{server.port}/v1/chat/completions"
    body = {"model": "gpt-4o", "messages": user("slow one")}
    async with httpx.AsyncClient() as http:
        in_flight = asyncio.ensure_future(http.post(url, json=body))
        await asyncio.wait_for(fake.entered.wait(), 5)
        stop.set()
        await asyncio.sleep(0.2)
        async with httpx.AsyncClient() as late:  # a new connection
            with pytest.raises(httpx.ConnectError):
                await late.post(url, json=body)
        # gRPC stopped accepting at the same time: the drains run side by side
        async with grpc.aio.insecure_channel(f"127.0.0.1:{container.grpc_server().port}") as ch:
            stub = pb_grpc.InferenceServiceStub(ch)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Infer(pb.InferenceRequest(model="gpt-4o", prompt="late"), timeout=2)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        fake.gate.set()
        answer = await asyncio.wait_for(in_flight, 5)
    await asyncio.wait_for(serving, 10)
    assert answer.json()["choices"][0]["message"]["content"] == "echo: slow one"


class _EmptyApi:
    drain = Drain()

    def app(self) -> web.Application:
        return web.Application()


async def test_reuse_port_lets_workers_share_the_port_and_only_then() -> None:
    api: Any = _EmptyApi()
    first = HttpServer(api, "127.0.0.1", 0, reuse_port=True)
    port = await first.start()
    try:
        shared = HttpServer(api, "127.0.0.1", port, reuse_port=True)
        assert await shared.start() == port
        await shared.stop()
        with pytest.raises(OSError, match="in use"):  # without it, a second one fails
            await HttpServer(api, "127.0.0.1", port).start()
    finally:
        await first.stop()
