"""The providers' HTTP client (httpx over aiohttp's pool) against real sockets on loopback:
its failures leave as the httpx exceptions the error classification expects."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import httpx
import pytest

from adapters.outbound.providers import HttpSettings, http_client
from adapters.outbound.providers.errors import transport_failure
from domain.errors import ConnectionsExhausted
from domain.key_pool import ApiKey


@pytest.fixture
async def silent_server() -> AsyncIterator[str]:
    """Accepts connections and reads requests, never answers."""

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(65536):
            pass
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield f"http://127.0.0.1:{port}"


async def test_a_full_pool_is_a_pool_timeout(silent_server: str) -> None:
    settings = HttpSettings(connect=0.2, pool=0.2, read=5.0, max_connections=1)
    async with http_client(silent_server, settings) as client:
        held = asyncio.create_task(client.post("/v1/chat/completions", json={}))
        await asyncio.sleep(0.1)  # the one connection is taken
        with pytest.raises(httpx.PoolTimeout) as caught:
            await client.post("/v1/chat/completions", json={})
        held.cancel()
    failure = transport_failure(caught.value, provider="openai", key=ApiKey("sk-test"))
    assert isinstance(failure, ConnectionsExhausted)


async def test_a_silent_upstream_is_a_read_timeout(silent_server: str) -> None:
    async with http_client(silent_server, HttpSettings(read=0.2)) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.post("/v1/chat/completions", json={})


async def test_a_refused_connection_is_a_connect_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    async with http_client(f"http://127.0.0.1:{port}") as client:
        with pytest.raises(httpx.ConnectError):
            await client.post("/v1/chat/completions", json={})


@pytest.fixture
async def forward_proxy() -> AsyncIterator[tuple[str, list[str]]]:
    """A plain-HTTP forward proxy stand-in: records each request line, answers 200 itself."""
    seen: list[str] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            seen.append(line.decode().strip())
            length = 0
            while (header := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = header.decode().partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            await reader.readexactly(length)
            body = b'{"proxied": true}'
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\n\r\n%s" % (len(body), body)
            )
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield f"http://127.0.0.1:{port}", seen


async def test_the_environments_proxy_is_used_and_no_proxy_bypasses_it(
    forward_proxy: tuple[str, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy, seen = forward_proxy
    monkeypatch.setenv("HTTP_PROXY", proxy)
    monkeypatch.setenv("NO_PROXY", "bypassed.invalid")
    async with http_client("http://upstream.invalid", HttpSettings()) as client:
        for _ in range(2):
            reply = await client.post("/v1/chat/completions", json={})
            assert reply.json() == {"proxied": True}
    assert seen == ["POST http://upstream.invalid/v1/chat/completions HTTP/1.1"] * 2
    async with http_client("http://bypassed.invalid", HttpSettings(connect=0.5)) as client:
        with pytest.raises(httpx.ConnectError):  # straight to the (unresolvable) host
            await client.post("/v1/chat/completions", json={})
    assert len(seen) == 2
