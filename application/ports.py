"""What the application needs from the outside world. Adapters subclass these explicitly."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Protocol

from domain.circuit_breaker import BreakerState
from domain.key_pool import ApiKey
from domain.model import Answer, CacheStatus, Completion, InferenceRequest, StreamEvent, Usage


class Provider(Protocol):
    """One upstream LLM API. `request.model` is already the upstream model name.

    Failures are raised as `domain.errors.ProviderFailure` subclasses, classified by the adapter:
    RateLimited (429), KeyRejected (401/403), UpstreamFault (5xx, timeout, connection error,
    malformed answer), UpstreamRejected (other 4xx). Their messages never hold key material.
    """

    name: str

    async def complete(self, request: InferenceRequest, key: ApiKey) -> Completion: ...

    def stream(self, request: InferenceRequest, key: ApiKey) -> AsyncGenerator[StreamEvent, None]:
        """Deltas, then exactly one StreamEnd. Closing the iterator aborts the upstream call."""
        ...


class ResponseCache(Protocol):
    async def lookup(self, request: InferenceRequest, provider: str) -> Answer | None: ...

    async def store(self, request: InferenceRequest, completion: Completion) -> None: ...


class Clock(Protocol):
    def now(self) -> float:
        """Monotonic seconds."""
        ...


class Sleeper(Protocol):
    async def sleep(self, seconds: float) -> None: ...


class RandomSource(Protocol):
    def random(self) -> float:
        """Uniform in [0, 1)."""
        ...


class Metrics(Protocol):
    def attempt(self, provider: str, outcome: str) -> None: ...

    def tokens(self, provider: str, model: str, usage: Usage) -> None: ...

    def cache_lookup(self, status: CacheStatus) -> None: ...

    def cache_error(self, operation: str) -> None: ...

    def breaker_state(self, provider: str, state: BreakerState) -> None: ...
