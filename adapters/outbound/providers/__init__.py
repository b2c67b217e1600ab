"""Outbound adapters for the upstream LLM APIs (OpenAI and compatible servers, Gemini).

The modules are imported by the composition root only: `adapters.outbound.providers.openai`,
`adapters.outbound.providers.gemini`. This package module holds the HTTP client settings they
share and deliberately imports none of them (they import it).
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from opentelemetry import trace

from adapters.outbound.observability.tracing import instrument_http_client
from adapters.outbound.providers.transport import AiohttpTransport


@dataclass(frozen=True, slots=True)
class HttpSettings:
    """Timeouts (seconds) and pool bounds of one upstream's shared `httpx.AsyncClient` (over
    aiohttp's pool: `max_connections` bounds every connection, idle ones included).

    `read` bounds each socket read, including the wait for the response headers of a unary call,
    which arrive only once the whole answer is generated: keep it generous and let the request
    deadline (`REQUEST_TIMEOUT`) cut the call short.
    """

    connect: float = 5.0
    read: float = 300.0
    write: float = 30.0
    pool: float = 10.0
    max_connections: int = 100
    keepalive_expiry: float = 30.0

    def __post_init__(self) -> None:
        for name in ("connect", "read", "write", "pool", "keepalive_expiry"):
            if getattr(self, name) <= 0:
                raise ValueError(f"HttpSettings.{name} must be positive")
        if self.max_connections < 1:
            raise ValueError("HttpSettings: max_connections must be >= 1")


def http_client(
    base_url: str,
    settings: HttpSettings | None = None,
    tracer_provider: trace.TracerProvider | None = None,
) -> httpx.AsyncClient:
    """A bounded client for one upstream, instrumented for `tracer_provider` (or carrying only
    the W3C context without it). The caller owns it: `await client.aclose()` on exit."""
    s = settings or HttpSettings()
    client = httpx.AsyncClient(
        base_url=base_url,
        timeout=httpx.Timeout(connect=s.connect, read=s.read, write=s.write, pool=s.pool),
        follow_redirects=False,
        transport=AiohttpTransport(s.max_connections, s.keepalive_expiry),
    )
    return instrument_http_client(client, tracer_provider)
