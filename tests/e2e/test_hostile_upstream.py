"""An upstream that answers 200 with things the proxy must not pass on, over real gRPC and HTTP."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
import pytest
from aiohttp import web

from adapters.inbound.grpc.generated import proxy_pb2 as pb
from tests.harness import running_proxy, serving

ANSWER = {
    "model": "gpt-4o-mini",
    "choices": [{"index": 0, "message": {"content": "hi"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 2**40, "completion_tokens": 1},
}


@asynccontextmanager
async def hostile() -> AsyncIterator[tuple[str, list[bool]]]:
    """Unary: a huge token count. Streams: an HTML page with status 200."""
    calls: list[bool] = []

    async def chat(request: web.Request) -> web.Response:
        streamed = bool((await request.json()).get("stream"))
        calls.append(streamed)
        if streamed:
            return web.Response(
                text="<html><body>maintenance</body></html>", content_type="text/html"
            )
        return web.Response(text=json.dumps(ANSWER), content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    async with serving(app) as port:
        yield f"http://127.0.0.1:{port}/v1", calls


async def test_an_out_of_range_token_count_is_a_malformed_answer_retried_once() -> None:
    async with hostile() as (url, calls), running_proxy(openai_base_url=url) as proxy:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await proxy.stub.Infer(pb.InferenceRequest(model="gpt-4o-mini", prompt="hi"))
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "prompt_tokens is out of range" in (caught.value.details() or "")
    assert calls == [False, False]


async def test_an_html_page_sent_to_a_stream_is_malformed_not_truncated() -> None:
    async with hostile() as (url, calls), running_proxy(openai_base_url=url) as proxy:
        call = proxy.stub.InferStream(pb.InferenceRequest(model="gpt-4o-mini", prompt="hi"))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            _ = [chunk async for chunk in call]
    details = caught.value.details() or ""
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "unexpected content type 'text/html'" in details
    assert "truncated" not in details
    assert calls == [True, True]
