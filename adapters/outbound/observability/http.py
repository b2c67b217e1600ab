"""The operations HTTP server on METRICS_PORT: /metrics, /healthz (liveness), /readyz."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from aiohttp import web

log = logging.getLogger(__name__)

Check = Callable[[], bool | Awaitable[bool]]
BackendProbe = Callable[[], str | Awaitable[str]]
BACKEND_STATES = frozenset({"up", "down", "unknown"})
T = TypeVar("T")


class Exposition(Protocol):
    def render(self, accept: str | None) -> tuple[bytes, str]:
        """The metrics in the format `accept` asks for, and its content type."""
        ...


@dataclass(frozen=True)
class Readiness:
    """Ready = `serving` (gRPC server up, not draining) and `routable` (some provider can take a
    request). `backends` (name -> "up" / "down" / "unknown") are reported, never required: the
    cache fails open, so a down Redis must not take every replica out of the Service.

    Each callable may be sync or async; one that raises or takes longer than `timeout` counts as
    not ready (checks) or "down" (backends)."""

    serving: Check
    routable: Check
    backends: Mapping[str, BackendProbe] = field(default_factory=dict)
    timeout: float = 1.0

    async def report(self) -> tuple[bool, dict[str, object]]:
        serving, routable, *states = await asyncio.gather(
            self._check("serving", self.serving),
            self._check("routable", self.routable),
            *(self._backend(name, probe) for name, probe in self.backends.items()),
        )
        checks = {"serving": bool(serving), "routable": bool(routable)}
        backends = dict(zip(self.backends, map(str, states), strict=True))
        ready = all(checks.values())
        return ready, {"ready": ready, "checks": checks, "backends": backends}

    async def _check(self, name: str, check: Check) -> bool:
        try:
            return bool(await self._call(check))
        except Exception as exc:
            log.warning("readiness check %s failed: %s", name, type(exc).__name__)
            return False

    async def _backend(self, name: str, probe: BackendProbe) -> str:
        try:
            state = await self._call(probe)
        except Exception as exc:
            log.info("backend probe %s failed: %s", name, type(exc).__name__)
            return "down"
        return state if state in BACKEND_STATES else "unknown"

    async def _call(self, probe: Callable[[], T | Awaitable[T]]) -> T:
        result = probe()
        if inspect.isawaitable(result):
            return await asyncio.wait_for(result, self.timeout)
        return result


class OpsServer:
    """`await start()` returns the bound port (pass port 0 for any free one)."""

    def __init__(
        self, metrics: Exposition, readiness: Readiness, host: str = "0.0.0.0", port: int = 9090,
        reuse_port: bool = False,
    ) -> None:  # fmt: skip
        self._metrics = metrics
        self._readiness = readiness
        self._host = host
        self._port = port
        self._reuse_port = reuse_port  # WORKERS > 1: every worker listens on the port
        self._runner: web.AppRunner | None = None
        self.port = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self._scrape)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        return app

    async def start(self) -> int:
        runner = web.AppRunner(self.app(), access_log=None)  # no log line per scrape or probe
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._host, self._port, reuse_port=self._reuse_port or None)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = _bound_port(runner)
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _scrape(self, request: web.Request) -> web.Response:
        body, content_type = self._metrics.render(request.headers.get("Accept"))
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _readyz(self, request: web.Request) -> web.Response:
        ready, body = await self._readiness.report()
        return web.json_response(body, status=200 if ready else 503)


def _bound_port(runner: web.AppRunner) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    raise OSError("the ops server is not listening on a TCP port")
