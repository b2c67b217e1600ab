"""The two HTTP exchanges every provider makes, with failures classified the same way."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from datetime import datetime
from typing import Any

import httpx

from adapters.outbound.providers.cancellation import cancelled_once
from adapters.outbound.providers.errors import (
    MAX_ANSWER_BYTES,
    json_or_none,
    malformed,
    raise_for_outcome,
    read_limited,
    transport_failure,
)
from adapters.outbound.providers.sse import ServerSentEvent, SSEError, StreamStalled, aiter_events
from domain.key_pool import ApiKey


async def post_json(
    client: httpx.AsyncClient,
    url: str,
    body: dict[str, Any] | None,
    headers: dict[str, str],
    *,
    provider: str,
    key: ApiKey,
    now: datetime,
    max_bytes: int = MAX_ANSWER_BYTES,
    method: str = "POST",
) -> Any:
    """POSTs `body` (or sends `method` without one) and returns the parsed JSON answer (None
    when it is not JSON)."""

    async def exchange() -> bytes | None:
        async with client.stream(method, url, json=body, headers=headers) as response:
            await raise_for_outcome(response, provider=provider, key=key, now=now)
            return await read_limited(response, max_bytes)

    try:
        raw = await cancelled_once(exchange())
    except httpx.HTTPError as exc:
        raise transport_failure(exc, provider=provider, key=key) from None
    if raw is None:
        raise malformed(
            provider, f"the answer is larger than {max_bytes} bytes (MAX_RESPONSE_BYTES)"
        )
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
    max_bytes: int = MAX_ANSWER_BYTES,
) -> AsyncGenerator[ServerSentEvent, None]:
    """POSTs `body` and yields the answer's server-sent events. Silence longer than
    `idle_timeout` (before the headers or between reads) is an UpstreamFault; a body that is
    not an event stream, or longer than `max_bytes`, is a malformed answer (the consumer ends
    the stream with an error, never silently short); closing the generator closes the HTTP
    response."""
    try:
        try:
            async with asyncio.timeout(idle_timeout):
                request = client.build_request("POST", url, json=body, headers=headers)
                response = await cancelled_once(client.send(request, stream=True), _close)
        except TimeoutError:
            raise StreamStalled(idle_timeout) from None
        try:
            await raise_for_outcome(response, provider=provider, key=key, now=now)
            _expect_event_stream(response)
            chunks = _at_most(response.aiter_bytes(), max_bytes)
            async with aclosing(aiter_events(chunks, idle_timeout)) as events:
                async for event in events:
                    yield event
        finally:
            await cancelled_once(response.aclose())
    except (httpx.HTTPError, SSEError, StreamStalled) as exc:
        raise transport_failure(exc, provider=provider, key=key) from None


def _expect_event_stream(response: httpx.Response) -> None:
    """An HTML error page or a JSON body sent with 200 to a stream request is no stream."""
    media = response.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media and media != "text/event-stream":
        raise SSEError(f"unexpected content type {media[:60]!r} for a stream")


async def _at_most(chunks: AsyncIterator[bytes], limit: int) -> AsyncGenerator[bytes, None]:
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise SSEError(f"the stream is larger than {limit} bytes (MAX_RESPONSE_BYTES)")
        yield chunk


async def _close(response: httpx.Response) -> None:
    await response.aclose()
