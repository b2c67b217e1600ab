"""The HTTP listener of the OpenAI-compatible API (aiohttp), optionally over TLS, guarded against
slow and hostile clients: a connection must send its first request head within
HTTP_HEADER_TIMEOUT (and finish a TLS handshake within it), may idle HTTP_IDLE_TIMEOUT between
requests (aiohttp's keep-alive timeout), and over MAX_CONNECTIONS a new one gets a 503 and is
closed. aiohttp has the keep-alive timeout but neither of the others, so the listening socket is
ours (`loop.create_server`) and aiohttp's `Server` makes the protocol of each connection."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from adapters.inbound.drain import cut_margin
from adapters.inbound.http.app import OpenAIApi

log = logging.getLogger("llm_proxy.http")

LINGER = 2.0  # seconds (aiohttp's default: 10)
LOG_EVERY = 10.0  # seconds between two lines about refused connections
_BUSY = (
    b'{"error":{"message":"the proxy is at its limit of open connections (MAX_CONNECTIONS); '
    b'retry shortly","type":"api_error","param":null,"code":"service_unavailable"}}'
)
_BUSY_REPLY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
    b"Connection: close\r\nContent-Length: " + str(len(_BUSY)).encode() + b"\r\n\r\n" + _BUSY
)


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout: float = 10.0  # HTTP_HEADER_TIMEOUT (and the TLS handshake)
    idle_timeout: float = 60.0  # HTTP_IDLE_TIMEOUT: keep-alive between requests
    max_connections: int = 4096  # MAX_CONNECTIONS


class _Refuse(asyncio.Protocol):
    """A connection over MAX_CONNECTIONS: a 503 as soon as it sends something (answering
    before it has sent its request would make its kernel reset the connection, and the client
    would not see the answer), closed within LINGER seconds in any case."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        asyncio.get_running_loop().call_later(LINGER, transport.close)

    def data_received(self, data: bytes) -> None:
        if not self._transport.is_closing():
            self._transport.write(_BUSY_REPLY)
            self._transport.close()


class HttpServer:
    """`await start()` binds and returns the port (pass port 0 for any free one). `reuse_port`
    lets several worker processes share the port (SO_REUSEPORT)."""

    def __init__(
        self,
        api: OpenAIApi,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None = None,
        reuse_port: bool = False,
        limits: ConnectionLimits | None = None,
    ) -> None:
        self._api, self._host, self._port = api, host, port
        self._ssl, self._reuse_port = ssl_context, reuse_port
        self._limits = limits or ConnectionLimits()
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.Server | None = None
        self._server: web.Server | None = None
        self._grace = 10.0
        # connections whose first request head has not arrived: cut at the header timeout
        self._silent: set[RequestHandler] = set()
        self._last_refusal_log = float("-inf")
        self._refused = 0
        self.port = 0

    async def start(self, grace: float = 10.0) -> int:
        """Raises OSError when the address cannot be bound. `grace`: how long `stop` lets
        requests in flight run. A client that disconnects cancels its handler, and with it the
        upstream call (handler_cancellation)."""
        self._grace = grace
        app = self._api.app()
        app.middlewares.insert(0, self._greet)
        runner = web.AppRunner(
            app,
            access_log=None,
            handler_cancellation=True,
            shutdown_timeout=cut_margin(grace),
            keepalive_timeout=self._limits.idle_timeout,
            # after an answer sent before its body was read (408, 413, 503), the rest of the
            # body is read and dropped this long so the client sees the answer, then closed
            lingering_time=LINGER,
        )
        await runner.setup()
        assert runner.server is not None
        self._server = runner.server
        loop = asyncio.get_running_loop()
        try:
            self._listener = await loop.create_server(
                self._accept,
                self._host,
                self._port,
                ssl=self._ssl,
                ssl_handshake_timeout=self._limits.header_timeout if self._ssl else None,
                reuse_port=self._reuse_port or None,
                backlog=min(self._limits.max_connections, 4096),
            )
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(self._listener.sockets[0].getsockname()[1])
        return self.port

    def _accept(self) -> asyncio.Protocol:
        assert self._server is not None
        server = self._server
        if len(server.connections) >= self._limits.max_connections:
            self._log_refusal()
            return _Refuse()
        handler = server()
        self._silent.add(handler)
        asyncio.get_running_loop().call_later(
            self._limits.header_timeout, self._cut_if_silent, handler
        )
        return handler

    def _cut_if_silent(self, handler: RequestHandler) -> None:
        if handler in self._silent:
            self._silent.discard(handler)
            handler.force_close()

    @web.middleware
    async def _greet(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        self._silent.discard(request.protocol)
        return await handler(request)

    def _log_refusal(self) -> None:
        now = asyncio.get_running_loop().time()
        self._refused += 1
        if now - self._last_refusal_log < LOG_EVERY:
            return
        log.warning(
            "refused %d HTTP connection(s): %d open, the limit (MAX_CONNECTIONS)",
            self._refused,
            self._limits.max_connections,
        )
        self._last_refusal_log, self._refused = now, 0

    async def stop(self) -> None:
        """Stops accepting, closes idle connections, lets requests in flight run until two
        margins before the grace ends, then cuts the rest (a 503 or an SSE error event) and
        closes: within one SHUTDOWN_GRACE."""
        if self._runner is None:
            return
        runner, self._runner = self._runner, None
        margin = cut_margin(self._grace)
        if self._listener is not None:
            self._listener.close()
        if runner.server is not None:
            for connection in runner.server.connections:
                connection.close()  # idle ones now; busy ones after their request
        await self._api.drain.settle(self._grace - 2 * margin)
        await runner.cleanup()
