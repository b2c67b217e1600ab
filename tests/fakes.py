"""Hand-written fakes for the application's ports."""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import math
from collections import Counter, deque
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from application.ports import (
    AttributeValue,
    Clock,
    Counts,
    Embedder,
    KeyCooldowns,
    Metrics,
    ModelInfo,
    Provider,
    RandomSource,
    ResponseCache,
    ResponseStore,
    SharedKeys,
    Sleeper,
    SpanHandle,
    Tracer,
    UsageLedger,
    VectorIndex,
    VectorMatch,
    VectorPoint,
)
from domain.errors import ProviderFailure
from domain.key_pool import ApiKey
from domain.model import (
    Answer,
    CacheInfo,
    CacheStatus,
    Completion,
    Delta,
    EmbeddingRequest,
    Embeddings,
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
        # what `models` answers: a list, or an error to raise (ProviderFailure)
        self.listed: list[ModelInfo] | Exception = []
        self.listings = 0
        self.embedded: list[tuple[str, EmbeddingRequest]] = []

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

    async def models(self, key: ApiKey) -> list[ModelInfo]:
        self.listings += 1
        if isinstance(self.listed, Exception):
            raise self.listed
        return self.listed

    async def embed(self, request: EmbeddingRequest, key: ApiKey) -> Embeddings:
        """Follows the script's failures; answers vectors made from each text's length."""
        self.embedded.append((key.fingerprint, request))
        behaviour = self.script.popleft() if self.script else Reply("")
        await self._resolve(behaviour)
        size = request.dimensions or 3
        vectors = tuple(tuple(float(len(t) + i) for i in range(size)) for t in request.inputs)
        return Embeddings(vectors, request.model, self.name, sum(map(len, request.inputs)))

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
    backends: dict[str, bool] = field(default_factory=dict)
    semantic_skips: list[str] = field(default_factory=list)
    fallbacks: list[tuple[str, str]] = field(default_factory=list)
    index_backlog: int = 0
    index_dropped: dict[str, int] = field(default_factory=dict)
    tenant_tokens_counted: Counter[tuple[str, str, str]] = field(default_factory=Counter)

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

    def tenant_tokens(self, tenant: str, model: str, kind: str, count: int) -> None:
        self.tenant_tokens_counted[(tenant, model, kind)] += count

    def fallback(self, from_model: str, to_model: str) -> None:
        self.fallbacks.append((from_model, to_model))

    def cache_lookup(self, status: CacheStatus, similarity: float | None) -> None:
        self.lookups.append(status)

    def cache_error(self, backend: str, operation: str) -> None:
        self.cache_errors.append(operation)

    def cache_backend(self, backend: str, up: bool) -> None:
        self.backends[backend] = up

    def cache_semantic_skip(self, reason: str) -> None:
        self.semantic_skips.append(reason)

    def cache_index_backlog(self, texts: int) -> None:
        self.index_backlog = texts

    def cache_index_dropped(self, reason: str, count: int) -> None:
        self.index_dropped[reason] = self.index_dropped.get(reason, 0) + count


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


class WordEmbedder(Embedder):
    """Bag-of-words unit vectors: texts sharing words are close. `broken` makes it raise,
    `delay` makes it slow, `wait` is what it says a lookup would wait for its vector; `gate`,
    when cleared, holds background work."""

    identity = "fake:words"
    dimension = 64
    input_window = 40  # words

    def fits(self, text: str) -> bool:
        return len(text.split()) <= self.input_window

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.broken = False
        self.delay = 0.0
        self.wait = 0.0
        self.gate = asyncio.Event()
        self.gate.set()
        self.background_calls: list[list[str]] = []

    def expected_wait(self) -> float:
        return self.wait

    async def embed(self, texts: Sequence[str], *, background: bool = False) -> list[list[float]]:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.broken:
            raise ConnectionError("embedder down")
        if background:
            await self.gate.wait()
            if self.broken:
                raise ConnectionError("embedder down")
            self.background_calls.append(list(texts))
        self.calls.extend(texts)
        return [_bag_of_words(text, self.dimension) for text in texts]


def _bag_of_words(text: str, dimension: int) -> list[float]:
    vector = [0.0] * dimension
    for word in text.lower().replace("?", " ").replace(".", " ").split():
        digest = hashlib.sha256(word.encode()).digest()
        vector[digest[0] % dimension] += 1.0
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]


class MemoryIndex(VectorIndex):
    """`broken` makes it raise, `delay` makes searches slow."""

    def __init__(self) -> None:
        self.points: dict[str, VectorPoint] = {}
        self.broken = False
        self.delay = 0.0
        self.dimension: int | None = None

    def _check(self) -> None:
        if self.broken:
            raise ConnectionError("index down")

    async def ensure_ready(self, dimension: int) -> None:
        self._check()
        self.dimension = dimension

    async def search(
        self, vector: Sequence[float], scope: str, now: float, limit: int
    ) -> list[VectorMatch]:
        if self.delay:
            await asyncio.sleep(self.delay)
        self._check()
        matches = [
            VectorMatch(p.point_id, _cosine(vector, p.vector), p.entry_key, p.text, p.expires_at)
            for p in self.points.values()
            if p.scope == scope and p.expires_at > now
        ]
        return sorted(matches, key=lambda m: -m.similarity)[:limit]

    async def upsert(self, point: VectorPoint) -> None:
        self._check()
        self.points[point.point_id] = point

    async def delete(self, point_ids: Sequence[str]) -> None:
        self._check()
        for point_id in point_ids:
            self.points.pop(point_id, None)

    async def delete_expired(self, now: float) -> int:
        self._check()
        expired = [p.point_id for p in self.points.values() if p.expires_at <= now]
        await self.delete(expired)
        return len(expired)

    async def close(self) -> None:
        pass


def _cosine(a: Sequence[float], b: Sequence[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


class MemoryStore(ResponseStore):
    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.entries: dict[str, tuple[Completion, float]] = {}
        self.broken = False

    def _check(self) -> None:
        if self.broken:
            raise ConnectionError("store down")

    async def get(self, key: str) -> Completion | None:
        self._check()
        entry = self.entries.get(key)
        if entry is None or entry[1] <= self.clock.wall():
            return None
        return entry[0]

    async def put(self, key: str, completion: Completion, ttl: float) -> None:
        self._check()
        self.entries[key] = (completion, self.clock.wall() + ttl)

    async def delete(self, key: str) -> None:
        self._check()
        self.entries.pop(key, None)

    async def close(self) -> None:
        pass


@dataclass
class RecordedSpan:
    name: str
    attributes: dict[str, AttributeValue]
    parent: RecordedSpan | None
    events: list[tuple[str, dict[str, AttributeValue]]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    ended: bool = False

    def set(self, key: str, value: AttributeValue) -> None:
        self.attributes[key] = value

    def event(self, name: str, attributes: Mapping[str, AttributeValue] | None = None) -> None:
        self.events.append((name, dict(attributes or {})))

    def error(self, exc: BaseException) -> None:
        self.errors.append(type(exc).__name__)


class RecordingTracer(Tracer):
    """Keeps every span with its parent (the span current when it started, per task)."""

    def __init__(self) -> None:
        self.spans: list[RecordedSpan] = []
        self._current: contextvars.ContextVar[RecordedSpan | None] = contextvars.ContextVar(
            "span", default=None
        )

    @contextmanager
    def span(
        self, name: str, attributes: Mapping[str, AttributeValue] | None = None
    ) -> Iterator[SpanHandle]:
        span = RecordedSpan(name, dict(attributes or {}), self._current.get())
        self.spans.append(span)
        token = self._current.set(span)
        try:
            yield span
        except BaseException as exc:
            span.errors.append(type(exc).__name__)
            raise
        finally:
            span.ended = True
            self._current.reset(token)

    def named(self, name: str) -> list[RecordedSpan]:
        return [s for s in self.spans if s.name == name]


async def collected(events: AsyncIterator[Delta | Answer]) -> tuple[list[str], Answer]:
    """A use-case stream drained: its deltas' text, then the Answer it ended with."""
    deltas: list[str] = []
    answer = None
    async for event in events:
        if isinstance(event, Delta):
            deltas.append(event.content)
        else:
            answer = event
    assert answer is not None
    return deltas, answer


class SharedCooldowns(KeyCooldowns):
    """One board of key cooldowns several InferenceServices (as if processes) read and write;
    `ended` is the board's clock (the fake clock the services share)."""

    def __init__(self, clock: FakeClock) -> None:
        self._clock = clock
        self.until: dict[tuple[str, str], float] = {}
        self.disabled: set[tuple[str, str]] = set()
        self.reads = 0

    async def seen(self, provider: str) -> SharedKeys:
        self.reads += 1
        now = self._clock.now()
        cooling = {fp: u - now for (p, fp), u in self.until.items() if p == provider and u > now}
        return SharedKeys(cooling, frozenset(fp for p, fp in self.disabled if p == provider))

    def cooled(self, provider: str, fingerprint: str, seconds: float) -> None:
        until = self._clock.now() + seconds
        self.until[(provider, fingerprint)] = max(self.until.get((provider, fingerprint), 0), until)

    def rejected(self, provider: str, fingerprint: str) -> None:
        self.disabled.add((provider, fingerprint))


class MemoryLedger(UsageLedger):
    """Usage counters in a dict; `broken` makes every call raise."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], Counter[tuple[str, str]]] = {}
        self.broken = False

    async def add(self, tenant: str, period: str, counts: Counts, expires_at: float) -> None:
        if self.broken:
            raise ConnectionError("ledger down")
        self.counts.setdefault((tenant, period), Counter()).update(counts)

    async def read(self, tenant: str, period: str) -> dict[tuple[str, str], int]:
        if self.broken:
            raise ConnectionError("ledger down")
        return dict(self.counts.get((tenant, period), {}))

    async def close(self) -> None:
        pass
