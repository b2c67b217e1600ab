"""The embeddings use case: routing, breaker, key pool (with the key cooldowns other processes
saw) and retries as for chat, and the tenant's usage and budget; no cache (a vector is cheap and
exact, and clients that embed want their own model's), no fallback (another model's vectors live
in another space: mixing them would silently break a client's index)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import replace

from application.metering import Metering
from application.ports import (
    AttributeValue,
    Clock,
    KeyCooldowns,
    Metrics,
    RandomSource,
    Sleeper,
    Tracer,
)
from application.resilience import GEN_AI_SYSTEM, Attempts, Observers, Upstream
from domain.backoff import BackoffPolicy
from domain.errors import DeadlineExceeded, ProviderFailure, UpstreamFault
from domain.model import EmbeddingRequest, Embeddings, FinishReason, StreamEnd, Usage
from domain.routing import ModelRouter

DEADLINE_PASSED = "the request deadline passed before the embeddings came"


class EmbeddingService:
    """`upstream_timeout` (UPSTREAM_TIMEOUT; None: none) bounds each attempt; REQUEST_TIMEOUT
    (or the client's shorter deadline) bounds the whole call, waits included."""

    def __init__(
        self,
        router: ModelRouter,
        upstreams: Mapping[str, Upstream],
        backoff: BackoffPolicy,
        request_timeout: float,
        clock: Clock,
        sleeper: Sleeper,
        random: RandomSource,
        metrics: Metrics,
        tracer: Tracer,
        upstream_timeout: float | None = None,
        cooldowns: KeyCooldowns | None = None,
        metering: Metering | None = None,
    ) -> None:
        self._router, self._upstreams, self._backoff = router, upstreams, backoff
        self._request_timeout, self._upstream_timeout = request_timeout, upstream_timeout
        self._clock, self._sleeper, self._random = clock, sleeper, random
        self._metrics, self._tracer = metrics, tracer
        self._cooldowns, self._metering = cooldowns, metering

    async def embed(self, request: EmbeddingRequest, time_left: float | None = None) -> Embeddings:
        own = time_left is None or time_left >= self._request_timeout
        seconds = self._request_timeout if own else max(0.0, time_left or 0.0)
        deadline = self._clock.now() + seconds
        route = self._router.route(request.model)
        upstream = self._upstreams[route.provider]
        asked = replace(request, model=route.model) if route.model != request.model else request
        attributes: dict[str, AttributeValue] = {
            "gen_ai.system": GEN_AI_SYSTEM.get(route.provider, route.provider),
            "gen_ai.operation.name": "embeddings",
            "gen_ai.request.model": request.model,
            "llm_proxy.inputs": len(request.inputs),
        }
        with self._tracer.span("embeddings", attributes) as span:
            observers = Observers(self._metrics, self._tracer, self._cooldowns)
            attempts = Attempts(
                upstream, asked, self._backoff, self._clock, self._random, observers, span,
                lambda: deadline,
            )  # fmt: skip
            try:
                async with asyncio.timeout(deadline - self._clock.now()):
                    if self._metering is not None:
                        await self._metering.check(request.tenant)
                    embeddings = await self._attempts(upstream, asked, attempts, own)
            except TimeoutError:
                raise DeadlineExceeded(DEADLINE_PASSED) from None
        usage = Usage(embeddings.input_tokens, 0)
        self._metrics.tokens(upstream.name, request.model, usage)
        if self._metering is not None:
            await self._metering.record(request.tenant, request.model, usage, cached=False)
        return embeddings

    async def _attempts(
        self, upstream: Upstream, request: EmbeddingRequest, attempts: Attempts, own: bool
    ) -> Embeddings:
        """`own`: the deadline is the proxy's REQUEST_TIMEOUT (a provider still silent when it
        passes has failed), not a client's shorter one."""
        while True:
            await attempts.refresh()
            wait = attempts.key_wait()
            if wait > 0:
                await self._sleep(wait)
                await attempts.refresh()
            key = attempts.start()
            try:
                async with asyncio.timeout(self._upstream_timeout):
                    embeddings = await upstream.provider.embed(request, key)
            except TimeoutError:
                if self._upstream_timeout is None:
                    raise
                fault = UpstreamFault(
                    f"{upstream.name} did not answer within UPSTREAM_TIMEOUT "
                    f"({self._upstream_timeout:g}s)"
                )
                await self._sleep(attempts.failed(key, fault))
                continue
            except ProviderFailure as failure:
                await self._sleep(attempts.failed(key, failure))
                continue
            except asyncio.CancelledError:  # the deadline's timer, or the client left
                expired = own and self._clock.now() >= attempts.deadline()
                attempts.timed_out() if expired else attempts.aborted()
                raise
            except BaseException:
                attempts.aborted()
                raise
            end = StreamEnd(embeddings.model, FinishReason.STOP, Usage(embeddings.input_tokens))
            attempts.succeeded(end)
            return embeddings

    async def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            await self._sleeper.sleep(seconds)
