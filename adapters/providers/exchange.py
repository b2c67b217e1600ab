"""The two HTTP exchanges every provider makes, with failures classified the same way."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from contextlib import aclosing
from datetime import datetime
from typing import Any

import httpx

from adapters.providers.cancellation import cancelled_once
from adapters.providers.errors import (
    MAX_ANSWER_BYTES,
    json_or_none,
    malformed,
    raise_for_outcome,
    read_limited,
    transport_failure,
)
from adapters.providers.sse import ServerSentEvent, SSEError, StreamStalled, aiter_events
from domain.key_pool import ApiKey


async def post_json(
    client: httpx.AsyncClient,
    url: str,
    body: dict[str, Any],
    headers: dict[str, str],
    *,
    provider: str,
    key: ApiKey,
    now: datetime,
) -> Any:
    """POSTs `body` and returns the parsed JSON answer (None when it is not JSON)."""

    async def exchange() -> bytes | None:
        async with client.stream("POST", url, json=body, headers=headers) as response:
            await raise_for_outcome(response, provider=provider, key=key, now=now)
            return await read_limited(response, MAX_ANSWER_BYTES)

    try:
        raw = await cancelled_once(exchange())
    except httpx.HTTPError as exc:
        raise transport_failure(exc, provider=provider, key=key) from None
    if raw is None:
        raise malformed(provider, f"the answer is larger than {MAX_ANSWER_BYTES} bytes")
    return json_or_none(raw)


async def post_sse(
    client: httpx.AsyncClient,
    url: str,
    body: dict[str, Any],
    headers: dict[str, str],
    *,
    provider: str,
    key: ApiKey,
    now: datetime,
    idle_timeout: float,
) -> AsyncGenerator[ServerSentEvent, None]:
    """POSTs `body` and yields the answer's server-sent events. Silence longer than
    `idle_timeout` (before the headers or between reads) is an UpstreamFault; closing the
    generator closes the HTTP response."""
    try:
        try:
            async with asyncio.timeout(idle_timeout):
                request = client.build_request("POST", url, json=body, headers=headers)
                response = await cancelled_once(client.send(request, stream=True), _close)
        except TimeoutError:
            raise StreamStalled(idle_timeout) from None
        try:
            await raise_for_outcome(response, provider=provider, key=key, now=now)
            async with aclosing(aiter_events(response.aiter_bytes(), idle_timeout)) as events:
                async for event in events:
                    yield event
        finally:
            await cancelled_once(response.aclose())
    except (httpx.HTTPError, SSEError, StreamStalled) as exc:
        raise transport_failure(exc, provider=provider, key=key) from None


async def _close(response: httpx.Response) -> None:
    await response.aclose()
