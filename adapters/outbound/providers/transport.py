"""An httpx transport over aiohttp's connection pool.

httpx keeps the request/response model every provider, the error classification and the
OpenTelemetry HTTPX instrumentation are written against; aiohttp moves the bytes. Its pool costs
far less per request than httpcore's over anyio (docs/benchmarks.md, gateway.py: about a third
of the proxy's CPU per pass-through call went to httpcore and anyio). No cookie jar: an upstream
API's cookies are never sent back. aiohttp failures leave as the httpx exceptions
`adapters.outbound.providers.errors.transport_failure` classifies.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import aiohttp
import httpx
import yarl
from aiohttp.helpers import get_env_proxy_for_url

from application.resilience import CURRENT_ATTEMPT, AttemptProgress


async def _queued(_session: Any, context: SimpleNamespace, _params: Any) -> None:
    if isinstance(context.trace_request_ctx, AttemptProgress):
        context.trace_request_ctx.queue_started()


async def _dequeued(_session: Any, context: SimpleNamespace, _params: Any) -> None:
    if isinstance(context.trace_request_ctx, AttemptProgress):
        context.trace_request_ctx.queue_ended()


def _pool_tracing() -> aiohttp.TraceConfig:
    """Tells the attempt in progress (CURRENT_ATTEMPT) when it waits for a pooled connection:
    a timeout while queued is the proxy's own limit, not the provider's fault."""
    config = aiohttp.TraceConfig()
    config.on_connection_queued_start.append(_queued)
    config.on_connection_queued_end.append(_dequeued)
    config.freeze()
    return config


class AiohttpTransport(httpx.AsyncBaseTransport):
    """Plain HTTP/1.1 keep-alive to one upstream, at most `max_connections` at once, idle ones
    closed after `keepalive_expiry` seconds. The session is made on first use (inside the
    running event loop) and closed by `aclose()`."""

    def __init__(self, max_connections: int, keepalive_expiry: float) -> None:
        self._max_connections = max_connections
        self._keepalive_expiry = keepalive_expiry
        self._session: aiohttp.ClientSession | None = None
        self._busy = 0  # exchanges holding (or waiting for) a connection
        self._proxies: dict[tuple[str, str], tuple[str | None, aiohttp.BasicAuth | None]] = {}

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections,
                limit_per_host=0,
                keepalive_timeout=self._keepalive_expiry,
                ssl=httpx.create_ssl_context(),  # the CAs httpx verifies with (certifi, SSL_CERT_*)
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                trust_env=False,  # the environment's proxy is looked up once: `_proxy`
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,  # httpx decodes, as it does with its own transport
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),  # httpx sets them
                trace_configs=[_pool_tracing()],
            )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeout = request.extensions.get("timeout", {})
        connect, pool = timeout.get("connect"), timeout.get("pool")
        proxy, proxy_auth = self._proxy(request.url)
        self._busy += 1
        try:
            response = await self._client().request(
                request.method,
                str(request.url),
                proxy=proxy,
                proxy_auth=proxy_auth,
                headers=request.headers.multi_items(),
                data=request.content or None,
                allow_redirects=False,
                trace_request_ctx=CURRENT_ATTEMPT.get(),
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    # aiohttp's `connect` is the wait for a pooled connection plus the connect
                    connect=None if connect is None or pool is None else connect + pool,
                    sock_connect=connect,
                    sock_read=timeout.get("read"),
                ),
            )
        except BaseException as exc:
            self._busy -= 1
            if isinstance(exc, aiohttp.ClientError):
                raise self._httpx_error(exc, request, waited=True) from exc
            raise
        return httpx.Response(
            response.status,
            headers=response.raw_headers,
            stream=_Body(self, response, request),
            extensions={"http_version": b"HTTP/1.1"},
        )

    def _proxy(self, url: httpx.URL) -> tuple[str | None, aiohttp.BasicAuth | None]:
        """HTTP(S)_PROXY and NO_PROXY, as httpx honours them, read once per scheme and host:
        aiohttp's `trust_env` reads them (and ~/.netrc) again on every request, in a thread."""
        key = (url.scheme, url.host)
        found = self._proxies.get(key)
        if found is None:
            try:
                proxy, auth = get_env_proxy_for_url(yarl.URL(str(url)))
                found = (str(proxy), auth)
            except LookupError:
                found = (None, None)
            self._proxies[key] = found
        return found

    def _httpx_error(
        self, exc: aiohttp.ClientError, request: httpx.Request, *, waited: bool = False
    ) -> httpx.HTTPError:
        message = str(exc) or type(exc).__name__
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            # every connection busy while this one waited: the proxy's own limit
            if waited and self._busy >= self._max_connections:
                return httpx.PoolTimeout(message, request=request)
            return httpx.ConnectTimeout(message, request=request)
        if isinstance(exc, aiohttp.ServerTimeoutError):
            return httpx.ReadTimeout(message, request=request)
        if isinstance(exc, aiohttp.ClientConnectorError):
            return httpx.ConnectError(message, request=request)
        if isinstance(exc, aiohttp.ClientResponseError | aiohttp.ClientPayloadError):
            return httpx.RemoteProtocolError(message, request=request)
        return httpx.ReadError(message, request=request)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


class _Body(httpx.AsyncByteStream):
    """The response body as it arrives; closing it gives the connection back (or drops it when
    the body was not read to the end)."""

    def __init__(
        self, transport: AiohttpTransport, response: aiohttp.ClientResponse, request: httpx.Request
    ) -> None:
        self._transport = transport
        self._response = response
        self._request = request
        self._open = True

    async def __aiter__(self) -> AsyncIterator[bytes]:
        content = self._response.content
        try:
            async for chunk in content.iter_any():
                yield chunk
        except aiohttp.ClientError as exc:
            # aiohttp raises a broken connection's error ahead of the bytes that arrived before
            # it; those come first, as with httpx (a stream's client gets the content it was
            # sent, then the error; tests/faults/test_body_faults.py)
            if rest := content._read_nowait(-1):
                yield rest
            raise self._transport._httpx_error(exc, self._request) from exc

    async def aclose(self) -> None:
        if self._open:
            self._open = False
            self._transport._busy -= 1
            self._response.release()
