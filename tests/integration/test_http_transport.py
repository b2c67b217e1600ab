"""The providers' HTTP client (httpx over aiohttp's pool) against real sockets on loopback:
its failures leave as the httpx exceptions the error classification expects."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import httpx
import pytest

from adapters.providers import HttpSettings, http_client
from adapters.providers.errors import transport_failure
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
