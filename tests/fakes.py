"""Hand-written fakes for the application's ports."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

from application.ports import Clock, Metrics, Provider, RandomSource, ResponseCache, Sleeper
from domain.circuit_breaker import BreakerState
from domain.errors import ProviderFailure
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
    StreamEvent,
    Usage,
)


@dataclass
class Reply:
    """A successful answer; streamed as `chunks` (default: the content in one piece)."""

    content: str = "hello"
    finish: FinishReason = FinishReason.STOP
    chunks: tuple[str, ...] | None = None
    fail_after_chunks: ProviderFailure | None = None


@dataclass
class Fail:
    error: ProviderFailure


@dataclass
class Hang:
    """Never answers until cancelled."""


Behaviour = Reply | Fail | Hang


@dataclass
class Call:
    key: str
    request: InferenceRequest
    streamed: bool


class FakeProvider(Provider):
    """Plays a script of behaviours, one per call; echoes the prompt when the script is empty.

    `gate`, when set, holds every call until it is opened (for concurrency tests)."""

    def __init__(self, name: str, *script: Behaviour) -> None:
        self.name = name
        self.script: deque[Behaviour] = deque(script)
        self.calls: list[Call] = []
        self.cancelled = 0
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()

    def then(self, *behaviours: Behaviour) -> FakeProvider:
        self.script.extend(behaviours)
        return self

    async def complete(self, request: InferenceRequest, key: ApiKey) -> Completion:
        behaviour = await self._begin(request, key, streamed=False)
        reply = await self._resolve(behaviour)
        return self._completion(request, reply)

    async def stream(
        self, request: InferenceRequest, key: ApiKey
    ) -> AsyncGenerator[StreamEvent, None]:
        behaviour = await self._begin(request, key, streamed=True)
        reply = await self._resolve(behaviour)
        try:
            for chunk in reply.chunks or (reply.content,):
                yield Delta(chunk)
                await asyncio.sleep(0)
            if reply.fail_after_chunks is not None:
                raise reply.fail_after_chunks
            completion = self._completion(request, reply)
            yield StreamEnd(completion.model, completion.finish_reason, completion.usage)
        except (asyncio.CancelledError, GeneratorExit):
            self.cancelled += 1
            raise

    async def _begin(self, request: InferenceRequest, key: ApiKey, streamed: bool) -> Behaviour:
        self.calls.append(Call(key.fingerprint, request, streamed))
        self.entered.set()
        behaviour = self.script.popleft() if self.script else Reply(_echo(request))
        if self.gate is not None:
            await self.gate.wait()
        return behaviour

    async def _resolve(self, behaviour: Behaviour) -> Reply:
        if isinstance(behaviour, Fail):
            raise behaviour.error
        if isinstance(behaviour, Hang):
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        assert isinstance(behaviour, Reply)
        return behaviour

    def _completion(self, request: InferenceRequest, reply: Reply) -> Completion:
        words = len(reply.content.split())
        prompt_words = sum(len(m.content.split()) for m in request.messages)
        return Completion(
            reply.content, request.model, self.name, reply.finish, Usage(prompt_words, words)
        )


def _echo(request: InferenceRequest) -> str:
    return f"echo: {request.messages[-1].content}"


class FakeClock(Clock):
    def __init__(self, start: float = 1000.0) -> None:
        self.t = start

    def now(self) -> float:
        return self.t

    def wall(self) -> float:
        return 1_800_000_000.0 + self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class FakeSleeper(Sleeper):
    """Advances the fake clock instead of waiting, and remembers each sleep."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.sleeps: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.clock.advance(seconds)
        await asyncio.sleep(0)


class FixedRandom(RandomSource):
    def __init__(self, value: float = 0.5) -> None:
        self.value = value

    def random(self) -> float:
        return self.value


@dataclass
class RecordingMetrics(Metrics):
    active: int = 0
    finished: list[tuple[str, str, CacheStatus, str]] = field(default_factory=list)
    attempts: list[tuple[str, str]] = field(default_factory=list)
    token_counts: list[tuple[str, str, Usage]] = field(default_factory=list)
    lookups: list[CacheStatus] = field(default_factory=list)
    cache_errors: list[str] = field(default_factory=list)
    breaker: dict[str, BreakerState] = field(default_factory=dict)
    pools: dict[str, tuple[int, int, int]] = field(default_factory=dict)

    def request_started(self) -> None:
        self.active += 1

    def request_finished(
        self, provider: str, model: str, cache_status: CacheStatus, status: str, seconds: float
    ) -> None:
        self.active -= 1
        self.finished.append((provider, model, cache_status, status))

    def attempt(self, provider: str, outcome: str) -> None:
        self.attempts.append((provider, outcome))

    def tokens(self, provider: str, model: str, usage: Usage) -> None:
        self.token_counts.append((provider, model, usage))

    def cache_lookup(self, status: CacheStatus, similarity: float | None) -> None:
        self.lookups.append(status)

    def cache_error(self, backend: str, operation: str) -> None:
        self.cache_errors.append(operation)

    def breaker_state(self, provider: str, state: BreakerState) -> None:
        self.breaker[provider] = state

    def key_pool(self, provider: str, usable: int, cooling_down: int, disabled: int) -> None:
        self.pools[provider] = (usable, cooling_down, disabled)


class DictCache(ResponseCache):
    """An exact-match cache in a dict; `broken` makes every call raise."""

    def __init__(self) -> None:
        self.entries: dict[tuple[str, InferenceRequest], Completion] = {}
        self.broken = False

    async def lookup(self, request: InferenceRequest, provider: str) -> Answer | None:
        if self.broken:
            raise ConnectionError("cache down")
        completion = self.entries.get((provider, _uncontrolled(request)))
        return Answer(completion, CacheInfo(CacheStatus.EXACT, 1.0)) if completion else None

    async def store(self, request: InferenceRequest, completion: Completion) -> None:
        if self.broken:
            raise ConnectionError("cache down")
        self.entries[(completion.provider, _uncontrolled(request))] = completion


def _uncontrolled(request: InferenceRequest) -> InferenceRequest:
    from dataclasses import replace

    from domain.model import CacheControl

    return replace(request, cache=CacheControl())
