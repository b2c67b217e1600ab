"""What the application needs from the outside world. Adapters subclass these explicitly."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from domain.key_pool import ApiKey
from domain.model import (
    Answer,
    CacheStatus,
    Completion,
    EmbeddingRequest,
    Embeddings,
    InferenceRequest,
    StreamEvent,
    Usage,
)


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """A model a provider lists: its own name, and when it was made (Unix seconds; None when
    the provider does not say)."""

    id: str
    created: int | None = None


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

    async def models(self, key: ApiKey) -> Sequence[ModelInfo]:
        """The models the provider lists for `key`."""
        ...

    async def embed(self, request: EmbeddingRequest, key: ApiKey) -> Embeddings:
        """`request.model` is already the upstream model name. A provider without an
        embeddings API raises UpstreamRejected."""
        ...


class ResponseCache(Protocol):
    async def lookup(self, request: InferenceRequest, provider: str) -> Answer | None: ...

    async def store(self, request: InferenceRequest, completion: Completion) -> None: ...


class Embedder(Protocol):
    """Turns texts into vectors. `identity` names the model (and dimension) so vectors of
    different embedders never meet in one scope. `input_window` is how many tokens of a text
    the model reads (special tokens included): beyond it a text is cut, and two texts that
    differ only past it get the same vector."""

    identity: str
    dimension: int
    input_window: int

    async def embed(self, texts: Sequence[str], *, background: bool = False) -> list[list[float]]:
        """`background`: the cache's index backlog, which must not delay a lookup's texts: it
        runs when no lookup waits."""
        ...

    def fits(self, text: str) -> bool:
        """Whether the model reads all of `text` (False when it cannot tell)."""
        ...

    def expected_wait(self) -> float:
        """Seconds until a lookup's text submitted now is expected to have its vector, queueing
        behind other texts included; 0.0 when the embedder cannot tell (an API)."""
        ...


@dataclass(frozen=True, slots=True)
class VectorPoint:
    """One cached prompt in the vector index. `point_id` is a UUID string derived from
    `entry_key`, so storing the same entry twice overwrites it."""

    point_id: str
    vector: Sequence[float]
    scope: str
    entry_key: str
    text: str
    expires_at: float  # wall-clock seconds since the epoch


@dataclass(frozen=True, slots=True)
class VectorMatch:
    point_id: str
    similarity: float  # cosine, in [-1, 1]
    entry_key: str
    text: str
    expires_at: float


class VectorIndex(Protocol):
    async def ensure_ready(self, dimension: int) -> None:
        """Creates the collection (cosine distance) and payload indexes when missing."""
        ...

    async def search(
        self, vector: Sequence[float], scope: str, now: float, limit: int
    ) -> list[VectorMatch]:
        """Best matches first, only points whose scope equals `scope` and that have not
        expired at `now` (wall-clock seconds)."""
        ...

    async def upsert(self, point: VectorPoint) -> None: ...

    async def delete(self, point_ids: Sequence[str]) -> None: ...

    async def delete_expired(self, now: float) -> int:
        """Removes points expired at `now`; returns how many."""
        ...

    async def close(self) -> None: ...


class ResponseStore(Protocol):
    async def get(self, key: str) -> Completion | None: ...

    async def put(self, key: str, completion: Completion, ttl: float) -> None:
        """Stores the completion for `ttl` seconds."""
        ...

    async def delete(self, key: str) -> None: ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class SharedKeys:
    """What other processes saw of a provider's keys: `cooling` maps key fingerprints to the
    seconds left in their cooldown; `disabled` names keys the provider rejected."""

    cooling: Mapping[str, float]
    disabled: frozenset[str] = frozenset()


NOTHING_SHARED = SharedKeys({})


class KeyCooldowns(Protocol):
    """Key cooldowns shared by every process of the proxy (STATE_BACKEND=redis); the local
    backend shares nothing (each KeyPool keeps its own). Never raises: a backend that is down
    shares nothing until it is back."""

    async def seen(self, provider: str) -> SharedKeys:
        """Read before a key is lent, so no process uses a key another one saw cooling."""
        ...

    def cooled(self, provider: str, fingerprint: str, seconds: float) -> None:
        """Tells the others, in the background, that the key rests `seconds` from now."""
        ...

    def rejected(self, provider: str, fingerprint: str) -> None:
        """Tells the others, in the background, that the provider rejected the key."""
        ...


class RateLimiter(Protocol):
    """TENANT_RATE_LIMIT: one token bucket per tenant, in this process or shared by all."""

    async def take(self, tenant: str) -> float:
        """0 when the tenant may call now (a token is taken), else seconds until it may."""
        ...


Counts = Mapping[tuple[str, str], int]  # (model, kind) -> count; kinds: domain.usage.KINDS


class UsageLedger(Protocol):
    """Usage counters per tenant and period (domain.usage.Window.period), kept across
    restarts: in SQLite under CACHE_DIR, or in Redis shared by every replica."""

    async def add(self, tenant: str, period: str, counts: Counts, expires_at: float) -> None:
        """Adds `counts`; the period's counters may be forgotten after `expires_at` (wall)."""
        ...

    async def read(self, tenant: str, period: str) -> dict[tuple[str, str], int]: ...

    async def close(self) -> None: ...


class Clock(Protocol):
    def now(self) -> float:
        """Monotonic seconds."""
        ...

    def wall(self) -> float:
        """Wall-clock seconds since the epoch (for expiry shared across processes)."""
        ...


class Sleeper(Protocol):
    async def sleep(self, seconds: float) -> None: ...


class RandomSource(Protocol):
    def random(self) -> float:
        """Uniform in [0, 1)."""
        ...


class Metrics(Protocol):
    """What the application reports. Label values it passes are bounded except `model`, which
    comes from clients: the adapter must bound it."""

    def request_started(self) -> None: ...

    def request_finished(
        self, provider: str, model: str, cache_status: CacheStatus, status: str, seconds: float
    ) -> None:
        """`status` is the outcome's gRPC status name in lower case ("ok", "unavailable", ...);
        `provider` is "" when no provider was chosen (invalid request, unknown model)."""
        ...

    def attempt(self, provider: str, outcome: str) -> None: ...

    def tokens(self, provider: str, model: str, usage: Usage) -> None: ...

    def tenant_tokens(self, tenant: str, model: str, kind: str, count: int) -> None:
        """Usage of a tenant (a configured name, or "anonymous"); kind "prompt", "completion"
        or "saved" (answered from the cache)."""
        ...

    def fallback(self, from_model: str, to_model: str) -> None:
        """A request moved down its MODEL_FALLBACKS chain: `from_model` could not answer,
        `to_model` is tried next. Both are configured model names."""
        ...

    def cache_lookup(self, status: CacheStatus, similarity: float | None) -> None: ...

    def cache_error(self, backend: str, operation: str) -> None:
        """`backend` is "embedder", "vector_index" or "response_store"."""
        ...

    def cache_backend(self, backend: str, up: bool) -> None:
        """Whether the backend's last call succeeded."""
        ...

    def cache_semantic_skip(self, reason: str) -> None:
        """The semantic tier declined: "beyond_window" (the prompt is longer than the embedder
        reads: exact tier only), "different_question" (a candidate above the threshold was
        judged another question) or "embedder_busy" (the embedder could not give the lookup its
        vector within the cache's budget)."""
        ...

    def cache_index_backlog(self, texts: int) -> None:
        """How many stored answers wait for their vector (the index backlog's length)."""
        ...

    def cache_index_dropped(self, reason: str, count: int) -> None:
        """Stored answers given up before their vector was indexed (served by the exact tier
        only): "full" (the oldest, pushed out of a full backlog), "failed" (the embedder or the
        index kept failing on them) or "shutdown" (left when the process stopped)."""
        ...


AttributeValue = str | bool | int | float


class SpanHandle(Protocol):
    def set(self, key: str, value: AttributeValue) -> None: ...

    def event(self, name: str, attributes: Mapping[str, AttributeValue] | None = None) -> None: ...

    def error(self, exc: BaseException) -> None:
        """Marks the span failed by an exception that is handled (one that escapes the span's
        `with` block is recorded anyway)."""
        ...


class Tracer(Protocol):
    def span(
        self, name: str, attributes: Mapping[str, AttributeValue] | None = None
    ) -> AbstractContextManager[SpanHandle]:
        """A child of the current span, current itself inside the `with` block. Attributes never
        carry prompts, completions or secrets."""
        ...
