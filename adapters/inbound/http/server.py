"""The HTTP listener of the OpenAI-compatible API (aiohttp), optionally over TLS."""

from __future__ import annotations

import ssl

from aiohttp import web

from adapters.inbound.http.app import OpenAIApi


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
    ) -> None:
        self._api, self._host, self._port = api, host, port
        self._ssl, self._reuse_port = ssl_context, reuse_port
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self, grace: float = 10.0) -> int:
        """Raises OSError when the address cannot be bound. `grace`: how long `stop` waits for
        requests in flight. A client that disconnects cancels its handler, and with it the
        upstream call (handler_cancellation)."""
        runner = web.AppRunner(
            self._api.app(), access_log=None, handler_cancellation=True, shutdown_timeout=grace
        )
        await runner.setup()
        site = web.TCPSite(
            runner,
            self._host,
            self._port,
            ssl_context=self._ssl,
            reuse_port=self._reuse_port or None,
        )
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        for address in runner.addresses:
            if isinstance(address, tuple) and len(address) >= 2:
                self.port = int(address[1])
        return self.port

    async def stop(self) -> None:
        """Stops accepting, then lets requests in flight finish within the grace."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
