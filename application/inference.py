"""The inference use case: cache, coalescing, routing, resilience, for unary and streamed calls."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Awaitable, Hashable, Mapping
from contextlib import aclosing
from dataclasses import replace
from typing import TypeVar

from application.ports import (
    AttributeValue,
    Clock,
    Metrics,
    RandomSource,
    ResponseCache,
    Sleeper,
    SpanHandle,
    Tracer,
)
from application.resilience import GEN_AI_SYSTEM, Attempts, Observers, Upstream
from domain.backoff import BackoffPolicy
from domain.errors import DeadlineExceeded, ProviderFailure, UpstreamFault
from domain.key_pool import ApiKey
from domain.model import (
    Answer,
    CacheInfo,
    CacheStatus,
    Completion,
    Delta,
    FinishReason,
    InferenceRequest,
    StreamEnd,
)
from domain.routing import ModelRouter, Route

log = logging.getLogger(__name__)
T = TypeVar("T")

# Cached answers are replayed through InferStream in pieces of this many characters.
REPLAY_CHUNK_CHARS = 64


class InferenceService:
    def __init__(
        self,
        router: ModelRouter,
        upstreams: Mapping[str, Upstream],
        cache: ResponseCache | None,
        backoff: BackoffPolicy,
        request_timeout: float,
        clock: Clock,
        sleeper: Sleeper,
        random: RandomSource,
        metrics: Metrics,
        tracer: Tracer,
    ) -> None:
        self._router = router
        self._upstreams = upstreams
        self._cache = cache
        self._backoff = backoff
        self._request_timeout = request_timeout
        self._clock = clock
        self._sleeper = sleeper
        self._random = random
        self._metrics = metrics
        self._tracer = tracer
        self._inflight: dict[Hashable, _Shared] = {}
        self._background: set[asyncio.Task[None]] = set()

    def route(self, request: InferenceRequest) -> Route:
        return self._router.route(request.model)

    async def infer(self, request: InferenceRequest, time_left: float | None = None) -> Answer:
        """One complete answer. `time_left` is the client's remaining deadline in seconds."""
        deadline = self._deadline(time_left)
        route = self.route(request)
        with self._tracer.span("inference", _request_attributes(request, route)) as span:
            try:
                async with asyncio.timeout(deadline - self._clock.now()):
                    cached = await self._lookup(request, route)
                    if cached is not None:
                        return cached
                    key = _coalescing_key(request, route)
                    shared = self._inflight.get(key)
                    if shared is None:
                        call = self._call(request, route, deadline, span)
                        task = asyncio.ensure_future(call)
                        shared = self._inflight[key] = _Shared(task)
                        task.add_done_callback(lambda _: self._inflight.pop(key, None))
                    else:
                        span.event("coalesced")
                    return await shared.join()
            except TimeoutError:
                raise DeadlineExceeded(
                    "the request deadline passed before an answer came"
                ) from None

    async def stream(
        self, request: InferenceRequest, time_left: float | None = None
    ) -> AsyncGenerator[Delta | Answer, None]:
        """Deltas, then the complete Answer. Retries happen only before the first delta."""
        deadline = self._deadline(time_left)
        route = self.route(request)
        with self._tracer.span("inference", _request_attributes(request, route)) as span:
            cached = await self._bounded(deadline, self._lookup(request, route))
            if cached is not None:
                for piece in _pieces(cached.completion.content):
                    yield Delta(piece)
                yield cached
                return
            upstream = self._upstreams[route.provider]
            upstream_request = _for_upstream(request, route)
            attempts = self._attempts(upstream, upstream_request, span, deadline)
            while True:
                key = attempts.start()
                parts: list[str] = []
                try:
                    end = None
                    events = self._events(upstream, upstream_request, key, deadline)
                    async with aclosing(events) as it:
                        async for event in it:
                            if isinstance(event, StreamEnd):
                                end = event
                                break
                            parts.append(event.content)
                            yield event
                    if end is None:
                        raise UpstreamFault(f"{upstream.name} stream ended before it finished")
                except ProviderFailure as failure:
                    if parts:  # the client has content already: no retry, no silent truncation
                        attempts.settle(key, failure)
                        raise
                    await self._sleep(attempts.failed(key, failure))
                    continue
                except BaseException:
                    attempts.aborted()
                    raise
                attempts.succeeded(end)
                break
            completion = Completion(
                "".join(parts), end.model, upstream.name, end.finish_reason, end.usage
            )
            self._after_answer(request, completion)
            yield Answer(completion, self._miss_info(request))

    async def drain(self) -> None:
        """Waits for background cache stores (call on shutdown)."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    # -- unary path -------------------------------------------------------------------------

    async def _call(
        self, request: InferenceRequest, route: Route, deadline: float, span: SpanHandle
    ) -> Answer:
        upstream = self._upstreams[route.provider]
        upstream_request = _for_upstream(request, route)
        attempts = self._attempts(upstream, upstream_request, span, deadline)
        while True:
            key = attempts.start()
            try:
                completion = await self._bounded(
                    deadline, upstream.provider.complete(upstream_request, key)
                )
            except ProviderFailure as failure:
                await self._sleep(attempts.failed(key, failure))
                continue
            except BaseException:
                attempts.aborted()
                raise
            attempts.succeeded(
                StreamEnd(completion.model, completion.finish_reason, completion.usage)
            )
            self._after_answer(request, completion)
            return Answer(completion, self._miss_info(request))

    # -- helpers ----------------------------------------------------------------------------

    def _attempts(
        self, upstream: Upstream, request: InferenceRequest, span: SpanHandle, deadline: float
    ) -> Attempts:
        observers = Observers(self._metrics, self._tracer)
        return Attempts(
            upstream, request, self._backoff, self._clock, self._random, observers, span, deadline
        )

    def _deadline(self, time_left: float | None) -> float:
        budget = self._request_timeout
        if time_left is not None:
            budget = min(budget, max(0.0, time_left))
        return self._clock.now() + budget

    async def _bounded(self, deadline: float, call: Awaitable[T]) -> T:
        try:
            async with asyncio.timeout(deadline - self._clock.now()):
                return await call
        except TimeoutError:
            raise DeadlineExceeded("the request deadline passed before an answer came") from None

    async def _events(
        self, upstream: Upstream, request: InferenceRequest, key: ApiKey, deadline: float
    ) -> AsyncGenerator[Delta | StreamEnd, None]:
        events = upstream.provider.stream(request, key)
        try:
            while True:
                try:
                    event = await self._bounded(deadline, anext(events))
                except StopAsyncIteration:
                    return
                yield event
        finally:
            await events.aclose()

    async def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            await self._sleeper.sleep(seconds)

    async def _lookup(self, request: InferenceRequest, route: Route) -> Answer | None:
        if self._cache is None or request.cache.skip_lookup:
            return None
        try:
            answer = await self._cache.lookup(request, route.provider)
        except Exception as exc:  # the cache fails open, even when its adapter does not
            log.warning("cache lookup failed; treating as a miss: %s", type(exc).__name__)
            self._metrics.cache_error("cache", "lookup")
            answer = None
        if answer is None:
            self._metrics.cache_lookup(CacheStatus.MISS, None)
        else:
            self._metrics.cache_lookup(answer.cache.status, answer.cache.similarity)
        return answer

    def _miss_info(self, request: InferenceRequest) -> CacheInfo:
        if self._cache is None or request.cache.skip_lookup:
            return CacheInfo(CacheStatus.BYPASS)
        return CacheInfo(CacheStatus.MISS)

    def _after_answer(self, request: InferenceRequest, completion: Completion) -> None:
        self._metrics.tokens(completion.provider, request.model, completion.usage)
        if (
            self._cache is None
            or request.cache.skip_store
            or completion.finish_reason is not FinishReason.STOP
        ):
            return
        task = asyncio.create_task(self._store(request, completion))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _store(self, request: InferenceRequest, completion: Completion) -> None:
        assert self._cache is not None
        try:
            await self._cache.store(request, completion)
        except Exception as exc:  # the cache fails open, even when its adapter does not
            log.warning("cache store failed: %s", type(exc).__name__)
            self._metrics.cache_error("cache", "store")


class _Shared:
    """An upstream call shared by identical concurrent requests; cancelled when all have left."""

    def __init__(self, task: asyncio.Future[Answer]) -> None:
        self.task = task
        self.waiters = 0

    async def join(self) -> Answer:
        self.waiters += 1
        try:
            return await asyncio.shield(self.task)
        finally:
            self.waiters -= 1
            if self.waiters == 0 and not self.task.done():
                self.task.cancel()


def _request_attributes(request: InferenceRequest, route: Route) -> dict[str, AttributeValue]:
    return {
        "gen_ai.system": GEN_AI_SYSTEM.get(route.provider, route.provider),
        "gen_ai.request.model": request.model,
        "llm_proxy.messages": len(request.messages),
    }


def _coalescing_key(request: InferenceRequest, route: Route) -> Hashable:
    return (route.provider, route.model, request.messages, request.temperature, request.max_tokens)


def _for_upstream(request: InferenceRequest, route: Route) -> InferenceRequest:
    return request if route.model == request.model else replace(request, model=route.model)


def _pieces(text: str) -> list[str]:
    return [text[i : i + REPLAY_CHUNK_CHARS] for i in range(0, len(text), REPLAY_CHUNK_CHARS)]
