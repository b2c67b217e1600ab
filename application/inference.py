"""The inference use case: cache, coalescing, routing, resilience, for unary and streamed calls."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Hashable, Mapping
from contextlib import aclosing
from dataclasses import replace
from typing import Any, TypeVar

from application.metering import Metering, tenant_name
from application.ports import (
    AttributeValue,
    Clock,
    KeyCooldowns,
    Metrics,
    RandomSource,
    ResponseCache,
    Sleeper,
    SpanHandle,
    Tracer,
)
from application.resilience import GEN_AI_SYSTEM, Attempts, Deadline, Observers, Upstream
from domain.backoff import BackoffPolicy
from domain.errors import DeadlineExceeded, ProviderFailure, ProxyError, UpstreamFault
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
from domain.routing import ModelRouter, Route, Target, falls_back

log = logging.getLogger(__name__)
T = TypeVar("T")

DEADLINE_PASSED = "the request deadline passed before an answer came"

# The reason of a fallback from a model whose provider has no API keys (it is never tried).
NO_KEYS = "no_keys"

# Cached answers are replayed through InferStream in pieces of this many characters.
REPLAY_CHUNK_CHARS = 64


class InferenceService:
    """`upstream_timeout` (UPSTREAM_TIMEOUT; None: none) bounds each attempt: a unary call's
    whole answer, a stream's first event. Expiring, it is the provider's fault and is retried.
    `cooldowns`: key cooldowns shared with other processes; `metering`: usage and budgets."""

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
        upstream_timeout: float | None = None,
        cooldowns: KeyCooldowns | None = None,
        metering: Metering | None = None,
    ) -> None:
        self._router = router
        self._upstreams = upstreams
        self._cache = cache
        self._backoff = backoff
        self._request_timeout = request_timeout
        self._upstream_timeout = upstream_timeout
        self._clock = clock
        self._sleeper = sleeper
        self._random = random
        self._metrics = metrics
        self._tracer = tracer
        self._cooldowns = cooldowns
        self._metering = metering
        self._inflight: dict[Hashable, _Shared] = {}
        self._background: set[asyncio.Task[None]] = set()

    async def infer(self, request: InferenceRequest, time_left: float | None = None) -> Answer:
        """One complete answer. `time_left` is the client's remaining deadline in seconds."""
        deadline = self._deadline(time_left)
        targets = self._router.targets(request.model)
        with self._tracer.span("inference", _request_attributes(request, targets[0])) as span:
            if targets[0].model == request.model:
                cached = await self._bounded(deadline, self._lookup(request, targets[0]))
                if cached is not None:
                    return cached
            await self._check_budget(request, deadline)
            shared = self._shared(request, targets, deadline, span)
            return await shared.join(deadline, self._clock.now())

    async def stream(
        self, request: InferenceRequest, time_left: float | None = None
    ) -> AsyncGenerator[Delta | Answer, None]:
        """Deltas, then the complete Answer. Retries and fallbacks happen only before the first
        delta."""
        deadline = self._deadline(time_left)
        targets = self._router.targets(request.model)
        with self._tracer.span("inference", _request_attributes(request, targets[0])) as span:
            failed, reason, checked = request.model, NO_KEYS, False
            for target in targets:
                asked, fallback_from = _asked_as(request, target), None
                if target.model != request.model:
                    fallback_from = request.model
                    self._fell_back(span, failed, target.model, reason)
                cached = await self._bounded(deadline, self._lookup(asked, target))
                if cached is not None:
                    for piece in _pieces(cached.completion.content):
                        yield Delta(piece)
                    yield replace(cached, fallback_from=fallback_from)
                    return
                if not checked:
                    await self._check_budget(request, deadline)
                    checked = True
                sent = False
                try:
                    reserve = self._reserve(target, targets)
                    events = self._stream_from(asked, target.route, deadline, span, reserve)
                    async with aclosing(events) as it:
                        async for event in it:
                            if isinstance(event, Delta):
                                sent = True
                                yield event
                            else:
                                yield replace(event, fallback_from=fallback_from)
                    return
                except ProxyError as error:
                    if sent or target is targets[-1] or not falls_back(error):
                        raise
                    failed, reason = target.model, type(error).__name__

    async def drain(self) -> None:
        """Waits for background cache stores (call on shutdown)."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    # -- unary path -------------------------------------------------------------------------

    def _shared(
        self,
        request: InferenceRequest,
        targets: tuple[Target, ...],
        deadline: Deadline,
        span: SpanHandle,
    ) -> _Shared:
        """The in-flight call this request can share (DESIGN §5), or a new one."""
        key = _coalescing_key(request, targets[0].route)
        shared = self._inflight.get(key)
        if shared is not None and shared.joinable:
            span.event("coalesced")
            return shared

        def forget() -> None:
            if self._inflight.get(key) is shared:
                del self._inflight[key]

        shared = self._inflight[key] = _Shared(deadline, forget)
        shared.start(self._call(request, targets, shared, span))
        return shared

    async def _call(
        self,
        request: InferenceRequest,
        targets: tuple[Target, ...],
        shared: _Shared,
        span: SpanHandle,
    ) -> Answer:
        """The first model of `targets` that answers; the next one only when the one before
        cannot (domain.routing.falls_back), each looked up in the cache first."""
        failed, reason = request.model, NO_KEYS
        for target in targets:
            asked = _asked_as(request, target)
            if target.model != request.model:
                self._fell_back(span, failed, target.model, reason)
                cached = await self._bounded(shared.deadline, self._lookup(asked, target))
                if cached is not None:
                    return replace(cached, fallback_from=request.model)
            try:
                reserve = self._reserve(target, targets)
                answer = await self._call_one(asked, target.route, shared, span, reserve)
            except ProxyError as error:
                if target is targets[-1] or not falls_back(error):
                    raise
                failed, reason = target.model, type(error).__name__
                continue
            if target.model == request.model:
                return answer
            return replace(answer, fallback_from=request.model)
        raise AssertionError("targets is never empty")

    async def _call_one(
        self,
        request: InferenceRequest,
        route: Route,
        shared: _Shared,
        span: SpanHandle,
        reserve: float = 0.0,
    ) -> Answer:
        upstream = self._upstreams[route.provider]
        upstream_request = _for_upstream(request, route)
        attempts = self._attempts(
            upstream, upstream_request, span, lambda: shared.deadline.at - reserve
        )
        while True:
            key = await self._key(attempts)
            try:
                completion = await self._attempt(
                    attempts, upstream.name, upstream.provider.complete(upstream_request, key)
                )
            except ProviderFailure as failure:
                await self._sleep(attempts.failed(key, failure))
                continue
            except BaseException:
                attempts.timed_out() if shared.expired else attempts.aborted()
                raise
            attempts.succeeded(
                StreamEnd(completion.model, completion.finish_reason, completion.usage)
            )
            self._after_answer(request, completion)
            return Answer(completion, self._miss_info(request))

    async def _attempt(self, attempts: Attempts, provider: str, call: Awaitable[T]) -> T:
        try:
            async with asyncio.timeout(self._upstream_timeout):
                return await call
        except TimeoutError:
            raise attempts.silent(
                f"{provider} did not answer within UPSTREAM_TIMEOUT ({self._upstream_timeout:g}s)"
            ) from None

    # -- streaming path ---------------------------------------------------------------------

    async def _stream_from(
        self,
        request: InferenceRequest,
        route: Route,
        deadline: Deadline,
        span: SpanHandle,
        reserve: float = 0.0,
    ) -> AsyncGenerator[Delta | Answer, None]:
        """One model's deltas, then its Answer; retries only before the first delta."""
        upstream = self._upstreams[route.provider]
        upstream_request = _for_upstream(request, route)
        attempts = self._attempts(upstream, upstream_request, span, lambda: deadline.at - reserve)
        while True:
            key = await self._key(attempts)
            parts: list[str] = []
            heard = -math.inf  # when the provider last sent an event
            try:
                end = None
                events = self._events(upstream, upstream_request, key, deadline, attempts)
                async with aclosing(events) as it:
                    async for event in it:
                        heard = self._clock.now()
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
            except DeadlineExceeded:
                if deadline.own:
                    attempts.timed_out(answering=self._answering(heard))
                else:
                    attempts.aborted()
                raise
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

    # -- helpers ----------------------------------------------------------------------------

    async def _key(self, attempts: Attempts) -> ApiKey:
        """A key no process saw cooling: the shared view is read before it is lent, and again
        after a wait for one."""
        await attempts.refresh()
        wait = attempts.key_wait()
        if wait > 0:
            await self._sleeper.sleep(wait)
            await attempts.refresh()
        return attempts.start()

    async def _check_budget(self, request: InferenceRequest, deadline: Deadline) -> None:
        if self._metering is not None:
            await self._bounded(deadline, self._metering.check(request.tenant))

    def _metered(self, request: InferenceRequest, completion: Completion, cached: bool) -> None:
        if self._metering is not None:
            usage = self._metering.record(request.tenant, request.model, completion.usage, cached)
            self._background_task(usage)

    def _background_task(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _reserve(self, target: Target, targets: tuple[Target, ...]) -> float:
        """What a model with fallbacks left keeps of the deadline for them: one UPSTREAM_TIMEOUT.
        It starts no retry, and waits for no key, that would leave less (a silent provider's
        last retry would otherwise run into the deadline and leave its fallbacks no time)."""
        return 0.0 if target is targets[-1] else self._upstream_timeout or 0.0

    def _fell_back(self, span: SpanHandle, failed: str, to: str, reason: str) -> None:
        """One step down a MODEL_FALLBACKS chain: `failed` could not answer, `to` is next."""
        span.event("fallback", {"from": failed, "to": to, "reason": reason})
        span.set("llm_proxy.fallback.from", failed)
        span.set("llm_proxy.fallback.to", to)
        self._metrics.fallback(failed, to)

    def _attempts(
        self,
        upstream: Upstream,
        request: InferenceRequest,
        span: SpanHandle,
        deadline: Callable[[], float],
    ) -> Attempts:
        observers = Observers(self._metrics, self._tracer, self._cooldowns)
        return Attempts(
            upstream, request, self._backoff, self._clock, self._random, observers, span, deadline
        )

    def _deadline(self, time_left: float | None) -> Deadline:
        if time_left is not None and time_left < self._request_timeout:
            return Deadline(self._clock.now() + max(0.0, time_left), own=False)
        return Deadline(self._clock.now() + self._request_timeout, own=True)

    async def _bounded(self, deadline: Deadline, call: Awaitable[T]) -> T:
        try:
            async with asyncio.timeout(deadline.at - self._clock.now()):
                return await call
        except TimeoutError:
            raise DeadlineExceeded(DEADLINE_PASSED) from None

    def _answering(self, heard: float) -> bool:
        """A stream that sent an event within UPSTREAM_TIMEOUT (or, that off, sent any: its
        idleness is the stream idle timeout's to judge) is still answering."""
        if self._upstream_timeout is None:
            return heard > -math.inf
        return self._clock.now() - heard < self._upstream_timeout

    async def _events(
        self,
        upstream: Upstream,
        request: InferenceRequest,
        key: ApiKey,
        deadline: Deadline,
        attempts: Attempts,
    ) -> AsyncGenerator[Delta | StreamEnd, None]:
        """The provider's events under the deadline; the first one also under UPSTREAM_TIMEOUT
        (one timer per wait, so the upstream call is cancelled once)."""
        events = upstream.provider.stream(request, key)
        first_by = math.inf
        if self._upstream_timeout is not None:
            first_by = self._clock.now() + self._upstream_timeout
        try:
            while True:
                until = min(deadline.at, first_by)
                try:
                    async with asyncio.timeout(until - self._clock.now()):
                        event = await anext(events)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    if until < deadline.at:
                        raise attempts.silent(
                            f"{upstream.name} sent nothing within UPSTREAM_TIMEOUT "
                            f"({self._upstream_timeout:g}s)"
                        ) from None
                    raise DeadlineExceeded(DEADLINE_PASSED) from None
                first_by = math.inf
                yield event
        finally:
            await events.aclose()

    async def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            await self._sleeper.sleep(seconds)

    async def _lookup(self, request: InferenceRequest, target: Target) -> Answer | None:
        """The cached answer in `target`'s scope (`request` asks for `target.model`)."""
        if not self._cacheable(request) or request.cache.skip_lookup:
            return None
        assert self._cache is not None
        try:
            answer = await self._cache.lookup(request, target.route.provider)
        except Exception as exc:  # the cache fails open, even when its adapter does not
            log.warning("cache lookup failed; treating as a miss: %s", type(exc).__name__)
            self._metrics.cache_error("cache", "lookup")
            answer = None
        if answer is None:
            self._metrics.cache_lookup(CacheStatus.MISS, None)
        else:
            self._metrics.cache_lookup(answer.cache.status, answer.cache.similarity)
            self._metered(request, answer.completion, cached=True)
        return answer

    def _cacheable(self, request: InferenceRequest) -> bool:
        """The cache keys an answer by the last user message: a request that ends otherwise (a
        prefill, a system message after the user) bypasses it."""
        return self._cache is not None and request.asks

    def _miss_info(self, request: InferenceRequest) -> CacheInfo:
        if not self._cacheable(request) or request.cache.skip_lookup:
            return CacheInfo(CacheStatus.BYPASS)
        return CacheInfo(CacheStatus.MISS)

    def _after_answer(self, request: InferenceRequest, completion: Completion) -> None:
        self._metrics.tokens(completion.provider, request.model, completion.usage)
        self._metered(request, completion, cached=False)
        if (
            not self._cacheable(request)
            or request.cache.skip_store
            or completion.finish_reason is not FinishReason.STOP
        ):
            return
        self._background_task(self._store(request, completion))

    async def _store(self, request: InferenceRequest, completion: Completion) -> None:
        assert self._cache is not None
        try:
            await self._cache.store(request, completion)
        except Exception as exc:  # the cache fails open, even when its adapter does not
            log.warning("cache store failed: %s", type(exc).__name__)
            self._metrics.cache_error("cache", "store")


class _Shared:
    """One upstream call shared by requests that would share a cache entry (DESIGN §5).

    It runs under the latest deadline of its waiters; each waiter leaves at its own deadline or
    on its own cancellation; the last one to leave cancels it (the call has no deadline timer
    of its own that could cancel it a second time) and, at the same moment, makes it
    unjoinable: a later request starts a call of its own.
    """

    def __init__(self, deadline: Deadline, forget: Callable[[], None]) -> None:
        self.deadline = deadline
        self.expired = False  # the last waiter left at the proxy's own deadline
        self._forget = forget
        self._waiters = 0
        self._abandoned = False
        self._task: asyncio.Future[Answer] | None = None

    def start(self, call: Coroutine[Any, Any, Answer]) -> None:
        self._task = task = asyncio.ensure_future(call)
        task.add_done_callback(self._done)

    @property
    def joinable(self) -> bool:
        return self._task is not None and not self._task.done() and not self._abandoned

    async def join(self, deadline: Deadline, now: float) -> Answer:
        assert self._task is not None
        self._waiters += 1
        if deadline.at > self.deadline.at:
            self.deadline = deadline
        try:
            async with asyncio.timeout(deadline.at - now):
                return await asyncio.shield(self._task)
        except TimeoutError:
            if self._waiters == 1:
                self.expired = deadline.own
            raise DeadlineExceeded(DEADLINE_PASSED) from None
        finally:
            self._waiters -= 1
            if self._waiters == 0 and not self._task.done():
                self._abandoned = True
                self._forget()
                self._task.cancel()
                await asyncio.wait({self._task})  # its attempt is recorded before we answer

    def _done(self, task: asyncio.Future[Answer]) -> None:
        self._forget()
        if not task.cancelled():
            task.exception()  # retrieved: every waiter may have left before it ended


def _request_attributes(request: InferenceRequest, first: Target) -> dict[str, AttributeValue]:
    provider = first.route.provider
    return {
        "gen_ai.system": GEN_AI_SYSTEM.get(provider, provider),
        "gen_ai.request.model": request.model,
        "llm_proxy.messages": len(request.messages),
        "llm_proxy.tenant": tenant_name(request.tenant),
    }


def _coalescing_key(request: InferenceRequest, route: Route) -> Hashable:
    """Everything that decides the cache entry: scope, tenant, parameters and cache control."""
    return (
        route.provider,
        route.model,
        request.model,
        request.tenant,
        request.messages,
        request.temperature,
        request.max_tokens,
        request.cache,
    )


def _asked_as(request: InferenceRequest, target: Target) -> InferenceRequest:
    """`request` as if it asked for `target.model`: its cache scope, its token metrics."""
    return request if target.model == request.model else replace(request, model=target.model)


def _for_upstream(request: InferenceRequest, route: Route) -> InferenceRequest:
    return request if route.model == request.model else replace(request, model=route.model)


def _pieces(text: str) -> list[str]:
    return [text[i : i + REPLAY_CHUNK_CHARS] for i in range(0, len(text), REPLAY_CHUNK_CHARS)]
