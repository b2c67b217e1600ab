"""One request's walk through breaker, key pool and backoff, shared by unary and streaming calls."""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from contextvars import ContextVar
from dataclasses import dataclass

from application.ports import (
    AttributeValue,
    Clock,
    KeyCooldowns,
    Metrics,
    Provider,
    RandomSource,
    SpanHandle,
    Tracer,
)
from domain.backoff import BackoffPolicy
from domain.circuit_breaker import BreakerState, CircuitBreaker, Permit, Verdict
from domain.errors import (
    ConnectionsExhausted,
    KeyRejected,
    MalformedAnswer,
    NoTimeToRetry,
    NoUsableKey,
    ProviderFailure,
    RateLimited,
    UpstreamFault,
    UpstreamUnavailable,
)
from domain.key_pool import ApiKey, KeyPool
from domain.model import EmbeddingRequest, InferenceRequest, StreamEnd

log = logging.getLogger(__name__)

# OpenTelemetry GenAI semantic conventions name providers this way.
GEN_AI_SYSTEM = {"openai": "openai", "gemini": "gcp.gemini", "anthropic": "anthropic"}


POOL_FULL = "the proxy's own connections to {provider} stayed busy (UPSTREAM_MAX_CONNECTIONS)"


class AttemptProgress:
    """What the transport tells about the attempt in progress: whether it had to wait for one
    of the proxy's own connections (UPSTREAM_MAX_CONNECTIONS). A timeout of an attempt that
    queued is the proxy's overload, not the provider's silence (DESIGN §4)."""

    __slots__ = ("queued", "waiting")

    def __init__(self) -> None:
        self.queued = False  # it waited for a connection at some point
        self.waiting = False  # it is waiting now

    def queue_started(self) -> None:
        self.queued = self.waiting = True

    def queue_ended(self) -> None:
        self.waiting = False


# The attempt of the running task (set by `Attempts.start`, read by the HTTP transport): the
# provider port's signature stays the one every provider implements.
CURRENT_ATTEMPT: ContextVar[AttemptProgress | None] = ContextVar("llm_proxy_attempt", default=None)


@dataclass(frozen=True, slots=True)
class Upstream:
    """A provider with its own key pool and breaker (both singletons per provider)."""

    provider: Provider
    keys: KeyPool
    breaker: CircuitBreaker

    @property
    def name(self) -> str:
        return self.provider.name


@dataclass(frozen=True, slots=True)
class Deadline:
    """When a request must be answered. `own`: the proxy's REQUEST_TIMEOUT set it (no shorter
    client deadline), so a provider still silent when it passes has failed (DESIGN §4)."""

    at: float
    own: bool


@dataclass(frozen=True, slots=True)
class Observers:
    metrics: Metrics
    tracer: Tracer
    cooldowns: KeyCooldowns | None = None  # shared with the other processes (STATE_BACKEND)


class Attempts:
    """Bookkeeping for the attempts of one request. Every started attempt ends exactly once:
    `succeeded`, `aborted` (cancelled, a client's deadline), `timed_out` (the proxy's own
    deadline), `settle` (failed, no retry wanted) or `failed` (returns the wait before the next
    attempt, or raises the error that ends the request). Each attempt is a span; retries and key
    switches are events of `request_span`. `deadline` is read when a wait is decided (a
    coalesced call runs under the latest deadline of its waiters, which can move)."""

    def __init__(
        self,
        upstream: Upstream,
        request: InferenceRequest | EmbeddingRequest,
        backoff: BackoffPolicy,
        clock: Clock,
        random: RandomSource,
        observers: Observers,
        request_span: SpanHandle,
        deadline: Callable[[], float],
    ) -> None:
        self._up = upstream
        self._request = request
        self._backoff = backoff
        self._clock = clock
        self._random = random
        self._metrics = observers.metrics
        self._tracer = observers.tracer
        self._shared = observers.cooldowns
        self._request_span = request_span
        self.deadline = deadline
        self.count = 0
        self._retries = 0
        self._switches = 0
        self._malformed = 0
        self._permit = Permit()
        self.progress = AttemptProgress()
        self._scope: AbstractContextManager[SpanHandle] | None = None
        self._span: SpanHandle | None = None

    async def refresh(self) -> None:
        """Merges what the other processes saw of the provider's keys into its pool (one round
        trip, before a key is lent)."""
        if self._shared is not None:
            seen = await self._shared.seen(self._up.name)
            self._up.keys.merge(seen.cooling, seen.disabled, self._clock.now())

    def start(self) -> ApiKey:
        now = self._clock.now()
        breaker = self._up.breaker
        self._permit = breaker.admit(now)
        try:
            key = self._up.keys.acquire(now)
        except NoUsableKey:
            breaker.record(self._permit, Verdict.NEUTRAL, now)
            raise
        self.count += 1
        self.progress = AttemptProgress()
        CURRENT_ATTEMPT.set(self.progress)
        self._open_span(key)
        return key

    def succeeded(self, end: StreamEnd) -> None:
        if self._span is not None:
            self._span.set("gen_ai.response.model", end.model)
            self._span.set("gen_ai.response.finish_reasons", end.finish_reason.value)
            self._span.set("gen_ai.usage.input_tokens", end.usage.input_tokens)
            self._span.set("gen_ai.usage.output_tokens", end.usage.output_tokens)
        self._end(Verdict.SUCCESS, "success")

    def key_wait(self) -> float:
        """0 when a key is usable now. Else the one rule for waiting on a key, at the start as
        after a 429: the earliest key reset, if it fits the retries and the deadline (it uses
        a retry); else NoUsableKey with when to retry."""
        now = self._clock.now()
        if self._up.keys.usable(now):
            return 0.0
        return self._wait_for_key(now, None)

    def aborted(self) -> None:
        self._end(Verdict.NEUTRAL, "aborted")

    def timed_out(self, answering: bool = False) -> None:
        """The proxy's own deadline passed: the provider's failure if it was silent, not if it
        was `answering` (a stream still producing) or the attempt queued for a connection."""
        if answering:
            self._end(Verdict.NEUTRAL, "cut_by_deadline")
        elif self.progress.queued:
            self._end(Verdict.NEUTRAL, "proxy_busy")
        else:
            self._end(Verdict.FAILURE, "timeout")

    def silent(self, message: str) -> ProviderFailure:
        """The failure of an attempt that heard nothing within UPSTREAM_TIMEOUT: the
        provider's (UpstreamFault), unless the attempt queued for one of the proxy's own
        connections (ConnectionsExhausted: neutral, not retried)."""
        if self.progress.queued:
            return ConnectionsExhausted(
                POOL_FULL.format(provider=self._up.name) + "; retry shortly", 1.0
            )
        return UpstreamFault(message)

    def settle(self, key: ApiKey, failure: ProviderFailure) -> None:
        """Records what a failed attempt says about the provider and the key."""
        now = self._clock.now()
        if self._span is not None:
            self._span.error(failure)
        if isinstance(failure, RateLimited):
            self._end(Verdict.NEUTRAL, "rate_limited")
            until = self._up.keys.cool_down(key, now, failure.retry_after)
            if self._shared is not None:
                self._shared.cooled(self._up.name, key.fingerprint, until - now)
        elif isinstance(failure, KeyRejected):
            self._end(Verdict.NEUTRAL, "key_rejected")
            self._up.keys.disable(key)
            if self._shared is not None:
                self._shared.rejected(self._up.name, key.fingerprint)
            log.warning(
                "%s rejected API key %s; disabled it",
                self._up.name,
                key.fingerprint,
                extra={"provider": self._up.name, "key": key.fingerprint},
            )
        elif isinstance(failure, ConnectionsExhausted):
            self._end(Verdict.NEUTRAL, "proxy_busy")
        elif isinstance(failure, MalformedAnswer):
            # one request's bad answer counts once, however often it is retried
            self._malformed += 1
            self._end(Verdict.FAILURE if self._malformed == 1 else Verdict.NEUTRAL, "malformed")
        elif isinstance(failure, UpstreamFault):
            self._end(Verdict.FAILURE, "upstream_fault")
        else:
            self._end(Verdict.NEUTRAL, "rejected")

    def failed(self, key: ApiKey, failure: ProviderFailure) -> float:
        """Settles the attempt; returns the wait before the next one or raises the final error."""
        self.settle(key, failure)
        now = self._clock.now()
        if isinstance(failure, RateLimited | KeyRejected):
            if self._switch_key(now):
                self._request_span.event("key_switch", {"reason": type(failure).__name__})
                return 0.0
            return self._wait_for_key(now, failure)
        if not isinstance(failure, UpstreamFault):
            raise failure
        if self._malformed > 1:
            raise UpstreamUnavailable(self._up.name, self.count, failure) from failure
        wait = self._backoff.delay(
            self._retries, self._random.random(), now, self.deadline(), failure.retry_after
        )
        if wait is None:
            if self._retries >= self._backoff.max_retries:
                raise UpstreamUnavailable(self._up.name, self.count, failure) from failure
            raise NoTimeToRetry(
                f"deadline reached after {self.count} attempt(s) to {self._up.name}; "
                f"last error: {failure}"
            ) from failure
        return self._retry(wait, failure)

    def _wait_for_key(self, now: float, failure: ProviderFailure | None) -> float:
        floor = self._up.keys.earliest_reset(now)
        if floor is None:
            raise NoUsableKey(self._up.name, None) from failure
        wait = self._backoff.delay(
            self._retries, self._random.random(), now, self.deadline(), floor
        )
        if wait is None:
            raise NoUsableKey(self._up.name, floor) from failure
        return self._retry(wait, failure)

    def _retry(self, wait: float, failure: ProviderFailure | None) -> float:
        self._retries += 1
        reason = type(failure).__name__ if failure is not None else "NoUsableKey"
        self._request_span.event(
            "retry", {"retry": self._retries, "wait_seconds": wait, "reason": reason}
        )
        return wait

    def _switch_key(self, now: float) -> bool:
        """A limited or rejected key is replaced at once by another usable one (no backoff)."""
        if self._switches < len(self._up.keys) and self._up.keys.usable(now):
            self._switches += 1
            return True
        return False

    def _open_span(self, key: ApiKey) -> None:
        request = self._request
        operation = "embeddings" if isinstance(request, EmbeddingRequest) else "chat"
        attributes: dict[str, AttributeValue] = {
            "gen_ai.system": GEN_AI_SYSTEM.get(self._up.name, self._up.name),
            "gen_ai.operation.name": operation,
            "gen_ai.request.model": request.model,
            "llm_proxy.attempt": self.count,
            "llm_proxy.key": key.fingerprint,
        }
        if isinstance(request, InferenceRequest) and request.temperature is not None:
            attributes["gen_ai.request.temperature"] = request.temperature
        if isinstance(request, InferenceRequest) and request.max_tokens is not None:
            attributes["gen_ai.request.max_tokens"] = request.max_tokens
        self._scope = self._tracer.span(f"{operation} {request.model}", attributes)
        self._span = self._scope.__enter__()

    def _end(self, verdict: Verdict, outcome: str) -> None:
        now, breaker = self._clock.now(), self._up.breaker
        before = breaker.state(now)
        breaker.record(self._permit, verdict, now)
        after = breaker.state(now)
        if after is not before:  # one line per transition, not per rejected call
            level = logging.WARNING if after is BreakerState.OPEN else logging.INFO
            log.log(
                level,
                "%s circuit breaker %s -> %s (last attempt: %s)",
                self._up.name,
                before.name.lower(),
                after.name.lower(),
                outcome,
                extra={"provider": self._up.name, "breaker": after.name.lower()},
            )
        self._metrics.attempt(self._up.name, outcome)
        if self._scope is not None:
            if self._span is not None:
                self._span.set("llm_proxy.outcome", outcome)
            scope, self._scope, self._span = self._scope, None, None
            scope.__exit__(None, None, None)
