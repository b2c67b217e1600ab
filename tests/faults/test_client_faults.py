"""Fault matrix, slow and hostile clients (issue 18): bodies that trickle in, connections that
say nothing, too many connections, lists too long to validate. The real proxy over real HTTP
and gRPC on loopback; raw sockets play the attacker."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import grpc
import httpx
import pytest

from adapters.inbound.grpc.generated import proxy_pb2_grpc as pb_grpc
from tests.faults.matrix import ask, chat_requests, metric_now
from tests.harness import Stack, stack

pytestmark = pytest.mark.integration
CHAT = "/v1/chat/completions"


def chat_body(text: str = "Hi.", **extra: object) -> bytes:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], **extra}
    return json.dumps(body).encode()


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


def head(length: int, path: str = CHAT) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bytes | None:
    """What the server sent before closing, or None if it was still open after `seconds`."""
    try:
        async with asyncio.timeout(seconds):
            return await reader.read()
    except TimeoutError:
        return None


async def chat(s: Stack, body: bytes | None = None) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as http:
        return await http.post(
            f"http://127.0.0.1:{s.proxy.http_port}{CHAT}",
            content=body or chat_body(),
            headers={"Content-Type": "application/json"},
        )


async def test_bodies_trickling_in_hold_no_slot_and_end_with_408_at_http_body_timeout() -> None:
    # the repro: Content-Length 1000, then one byte now and then, on every slot there is
    async with stack(http=True, max_concurrent_requests=2, http_body_timeout="1s") as s:
        slow = [await connect(s.proxy.http_port) for _ in range(2)]
        for _, writer in slow:
            writer.write(head(1000) + b"{")
            await writer.drain()
        await asyncio.sleep(0.2)  # both handlers are reading their bodies
        served = await chat(s)  # today: 429, for as long as the slow clients keep trickling
        answers = [await closed_within(reader, 5) for reader, _ in slow]
        for _, writer in slow:
            writer.close()
    assert served.status_code == 200
    for answer in answers:
        assert answer is not None  # answered and closed, not held open
        assert answer.startswith(b"HTTP/1.1 408")
        assert b"HTTP_BODY_TIMEOUT" in answer


async def test_bodies_over_max_buffered_bytes_are_refused_at_once_with_503() -> None:
    async with stack(
        http=True, max_request_bytes=8192, max_buffered_bytes=12_000, http_body_timeout="5s"
    ) as s:
        _, writer = await connect(s.proxy.http_port)
        writer.write(head(8000) + b"{")  # 8000 bytes reserved while it trickles
        await writer.drain()
        await asyncio.sleep(0.2)
        started = time.monotonic()
        over = await chat(s, chat_body("x" * 5000))  # 8000 + ~5100 > 12000
        waited = time.monotonic() - started
        fits = await chat(s)  # a small body still fits beside the slow one
        writer.close()
    assert over.status_code == 503
    assert "MAX_BUFFERED_BYTES" in over.json()["error"]["message"]
    assert over.headers["Retry-After"] == "1"
    assert waited < 4  # at once, not after the slow body's 5 s
    assert fits.status_code == 200


async def test_a_silent_or_half_sent_request_head_is_closed_at_http_header_timeout() -> None:
    async with stack(http=True, http_header_timeout="500ms") as s:
        silent = await connect(s.proxy.http_port)
        half = await connect(s.proxy.http_port)
        half[1].write(b"POST /v1/chat/comp")
        await half[1].drain()
        closed = [await closed_within(r, 5) for r, _ in (silent, half)]
        served = await chat(s)
        for _, writer in (silent, half):
            writer.close()
    assert closed == [b"", b""]  # closed by the proxy (never: still open)
    assert served.status_code == 200


async def test_an_idle_keep_alive_connection_is_closed_at_http_idle_timeout() -> None:
    async with stack(http=True, http_idle_timeout="500ms", http_header_timeout="5s") as s:
        reader, writer = await connect(s.proxy.http_port)
        body = chat_body()
        writer.write(head(len(body)) + body)
        await writer.drain()
        status = await reader.readline()
        rest = await closed_within(reader, 5)  # the answer, then closed once idle
        writer.close()
    assert status.startswith(b"HTTP/1.1 200")
    assert rest is not None


async def test_over_max_connections_a_new_connection_gets_503_until_one_closes() -> None:
    async with stack(http=True, max_connections=3, http_header_timeout="1s") as s:
        held = [await connect(s.proxy.http_port) for _ in range(3)]
        await asyncio.sleep(0.1)
        refused = await chat(s)
        closed = [await closed_within(r, 5) for r, _ in held]  # the header timeout frees them
        served = await chat(s)
        for _, writer in held:
            writer.close()
    assert refused.status_code == 503
    assert "MAX_CONNECTIONS" in refused.json()["error"]["message"]
    assert closed == [b"", b"", b""]
    assert served.status_code == 200


async def test_grpc_connections_over_max_connections_wait_and_silent_ones_are_cut() -> None:
    # gRPC: the same cap (grpc.max_allowed_incoming_connections) and a handshake bound
    async with stack(max_connections=2, http_header_timeout="2s") as s:
        held = [await connect(s.proxy.port) for _ in range(2)]  # no HTTP/2 preface, ever
        async with grpc.aio.insecure_channel(f"127.0.0.1:{s.proxy.port}") as channel:
            stub = pb_grpc.InferenceServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as over:
                await stub.Infer(ask("Hi."), timeout=1)
            closed = [await closed_within(r, 5) for r, _ in held]
        for _, writer in held:
            writer.close()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{s.proxy.port}") as channel:
            answer = await pb_grpc.InferenceServiceStub(channel).Infer(
                ask("Hi."), timeout=5, wait_for_ready=True
            )
    assert over.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    for sent in closed:  # cut by the handshake bound, not held forever
        assert sent is not None
        assert b"handshake timeout" in sent
    assert answer.content.startswith("sim-")


async def test_130k_messages_or_150k_content_parts_are_refused_before_validation() -> None:
    many = [{"role": "user", "content": "a"}] * 130_000
    parts = [{"type": "text", "text": "a"}] * 150_000
    async with stack(http=True, max_request_bytes=8 * 1024 * 1024) as s:
        messages = await chat(s, json.dumps({"model": "gpt-4o-mini", "messages": many}).encode())
        one = [{"role": "user", "content": parts}]
        content = await chat(s, json.dumps({"model": "gpt-4o-mini", "messages": one}).encode())
        served = await chat(s)
    assert messages.status_code == 400
    assert "130000 messages" in messages.json()["error"]["message"]
    assert "MAX_MESSAGES" in messages.json()["error"]["message"]
    assert content.status_code == 400  # today: accepted, and the event loop stalls for it
    assert "150000 content parts" in content.json()["error"]["message"]
    assert served.status_code == 200


# -- browsers -------------------------------------------------------------------------------


async def post_raw(s: Stack, body: bytes, headers: dict[str, str | bytes]) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as http:
        return await http.post(
            f"http://127.0.0.1:{s.proxy.http_port}{CHAT}", content=body, headers=headers
        )


async def test_a_cross_site_form_post_is_refused_before_any_upstream_call() -> None:
    # the repro: text/plain (no preflight) from https://evil.example got 200 and an upstream call
    async with stack(http=True) as s:
        evil = await post_raw(
            s, chat_body(), {"Content-Type": "text/plain", "Origin": "https://evil.example"}
        )
        plain = await post_raw(s, chat_body(), {"Content-Type": "text/plain"})
        upstream = chat_requests(s)
        served = await chat(s)
    assert evil.status_code == 403
    assert "HTTP_ALLOWED_ORIGINS" in evil.json()["error"]["message"]
    assert plain.status_code == 415
    assert "application/json" in plain.json()["error"]["message"]
    assert upstream == 0
    assert served.status_code == 200


async def test_a_rebound_host_is_misdirected_without_client_auth_and_served_with_it() -> None:
    rebound = {"Content-Type": "application/json", "Host": "evil.example"}
    async with stack(http=True) as s:
        refused = await post_raw(s, chat_body(), rebound)
        local = await post_raw(
            s, chat_body(), {"Content-Type": "application/json", "Host": "localhost:8080"}
        )
        upstream_after_refusal = chat_requests(s) - 1
    async with stack(http=True, auth_tokens="tok-1") as s:
        authenticated = await post_raw(s, chat_body(), {**rebound, "Authorization": "Bearer tok-1"})
    assert refused.status_code == 421
    assert "AUTH_TOKENS" in refused.json()["error"]["message"]
    assert upstream_after_refusal == 0
    assert local.status_code == 200
    assert authenticated.status_code == 200  # a token is proof enough: any Host


async def test_an_allowed_origin_gets_its_preflight_and_cors_headers() -> None:
    origin = "https://app.example"
    async with stack(http=True, http_allowed_origins=origin) as s, httpx.AsyncClient() as http:
        url = f"http://127.0.0.1:{s.proxy.http_port}{CHAT}"
        preflight = await http.options(
            url, headers={"Origin": origin, "Access-Control-Request-Method": "POST"}
        )
        answer = await http.post(
            url, content=chat_body(), headers={"Content-Type": "application/json", "Origin": origin}
        )
        other = await http.post(
            url,
            content=chat_body(),
            headers={"Content-Type": "application/json", "Origin": "https://other.example"},
        )
    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == origin
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]
    assert answer.status_code == 200
    assert answer.headers["Access-Control-Allow-Origin"] == origin
    assert other.status_code == 403


async def test_an_authorization_header_that_is_not_utf8_is_401_malformed_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    async with stack(http=True, auth_tokens="tok-1") as s:
        bad = b"Bearer \xff\xfe\xfd"
        answers = [
            await post_raw(
                s, chat_body(), {"Content-Type": "application/json", "Authorization": bad}
            )
            for _ in range(2)
        ]
        refused = await metric_now(s, "auth_failures_total", reason="malformed")
    for answer in answers:
        assert answer.status_code == 401  # today: 500 with a traceback in the log
        assert "not valid UTF-8" in answer.json()["error"]["message"]
    assert refused == 2
    assert len([r for r in caplog.records if r.name == "llm_proxy.auth"]) == 1  # throttled
    assert "Traceback" not in caplog.text
