"""The semantic cache use case: exact tier, then embedding -> vector search -> response store.

The semantic tier only judges what the embedder sees: a prompt longer than its input window is
served by the exact tier alone. A candidate above the threshold is served only when
`domain.same_question` judges it the same question.

It fails open: a backend that errors, or a lookup (or store) that takes longer than `timeout`
over all its backend calls, turns into a miss (counted and logged), never a failed request.

Under load it sheds instead of queueing: a lookup whose text would wait longer than
`embed_budget` behind other texts for the embedder skips the semantic tier ("embedder_busy"),
and a store's embedding is background work the embedder may refuse ("store_embedder_busy": the
answer is stored for the exact tier only). A saturated embedder thus costs a miss nothing but the
exact lookup.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
from collections import OrderedDict
from collections.abc import Awaitable
from contextlib import suppress
from dataclasses import dataclass
from typing import TypeVar

from application.ports import (
    Clock,
    Embedder,
    EmbedderBusy,
    Metrics,
    ResponseCache,
    ResponseStore,
    Sleeper,
    Tracer,
    VectorIndex,
    VectorPoint,
)
from domain.backend_health import BackendHealth, HealthEvent, Report
from domain.cache_policy import cache_scope, entry_key, point_id
from domain.model import Answer, CacheInfo, CacheStatus, Completion, InferenceRequest
from domain.same_question import embedding_text, same_question

log = logging.getLogger(__name__)
T = TypeVar("T")
CANDIDATES = 5
BACKENDS = ("embedder", "vector_index", "response_store")


@dataclass(frozen=True, slots=True)
class CachePolicy:
    threshold: float
    ttl: float
    timeout: float
    embed_budget: float = math.inf  # longest a lookup's text may queue for the embedder
    embedding_lru: int = 1024
    error_summary_every: float = 60.0


class SemanticCache(ResponseCache):
    def __init__(
        self,
        embedder: Embedder,
        index: VectorIndex,
        store: ResponseStore,
        policy: CachePolicy,
        clock: Clock,
        metrics: Metrics,
        tracer: Tracer,
    ) -> None:
        self._embedder = embedder
        self._index = index
        self._store = store
        self._policy = policy
        self._clock = clock
        self._metrics = metrics
        self._tracer = tracer
        self._vectors: OrderedDict[bytes, list[float]] = OrderedDict()  # by sha256 of the text
        self._index_ready = False
        self.states = dict.fromkeys(BACKENDS, "unknown")
        self._health = {b: BackendHealth(policy.error_summary_every) for b in BACKENDS}

    async def lookup(self, request: InferenceRequest, provider: str) -> Answer | None:
        with self._tracer.span("cache.lookup") as span:
            try:
                answer = await self._lookup(request, provider)
            except BackendDown:
                answer = None
            span.set("llm_proxy.cache.status", answer.cache.status.value if answer else "miss")
            if answer is not None:
                span.set("llm_proxy.cache.similarity", answer.cache.similarity)
            return answer

    async def store(self, request: InferenceRequest, completion: Completion) -> None:
        scope, prompt = self._scope(request, completion.provider), request.messages[-1].content
        key = entry_key(scope, prompt)
        ttl, deadline = self._policy.ttl, self._deadline()
        with self._tracer.span("cache.store"), suppress(BackendDown):
            put = self._store.put(key, completion, ttl)
            await self._call("response_store", "put", put, deadline)
            seen = embedding_text(prompt)
            if not self._embedder.fits(seen):
                return  # exact tier only: its vector would stand for a text it never saw whole
            try:
                vector = await self._embed(seen, deadline, background=True)
            except EmbedderBusy:  # lookups keep it busy: this answer serves exact repeats only
                self._metrics.cache_semantic_skip("store_embedder_busy")
                return
            await self._ensure_index(deadline)
            point = VectorPoint(point_id(key), vector, scope, key, prompt, self._clock.wall() + ttl)
            await self._call("vector_index", "upsert", self._index.upsert(point), deadline)

    async def prepare(self) -> None:
        """Loads what can be loaded ahead of the first request and creates the vector
        collection. Raises what the index raises, so startup can refuse a wrong collection."""
        await self._index.ensure_ready(self._embedder.dimension)
        self._index_ready = True

    async def sweep_every(self, sleeper: Sleeper, interval: float) -> None:
        """Deletes expired vectors every `interval` seconds, until cancelled."""
        while True:
            await sleeper.sleep(interval)
            removed = await self.sweep()
            if removed:
                log.info("cache sweep removed %d expired vectors", removed)

    async def close(self) -> None:
        for closing in (self._index.close(), self._store.close()):
            with suppress(Exception):
                await closing

    async def sweep(self) -> int:
        """Deletes expired vectors; returns how many (0 when the index is unreachable)."""
        try:
            deadline = self._deadline()
            await self._ensure_index(deadline)
            expired = self._index.delete_expired(self._clock.wall())
            return await self._call("vector_index", "sweep", expired, deadline)
        except BackendDown:
            return 0

    async def _lookup(self, request: InferenceRequest, provider: str) -> Answer | None:
        scope, prompt = self._scope(request, provider), request.messages[-1].content
        key, deadline = entry_key(scope, prompt), self._deadline()
        completion = await self._call("response_store", "get", self._store.get(key), deadline)
        if completion is not None:
            return Answer(completion, CacheInfo(CacheStatus.EXACT, 1.0))
        seen = embedding_text(prompt)
        if not self._embedder.fits(seen):
            self._metrics.cache_semantic_skip("beyond_window")
            return None
        vector = self._remembered(seen)
        if vector is None:
            if self._embedder.expected_wait() > self._policy.embed_budget:
                self._metrics.cache_semantic_skip("embedder_busy")
                return None
            vector = await self._embed(seen, deadline)
        await self._ensure_index(deadline)
        search = self._index.search(vector, scope, self._clock.wall(), CANDIDATES)
        for match in await self._call("vector_index", "search", search, deadline):
            if match.similarity < self._policy.threshold:
                break
            if not same_question(prompt, match.text, match.similarity, self._policy.threshold):
                self._metrics.cache_semantic_skip("different_question")
                continue
            found = self._store.get(match.entry_key)
            completion = await self._call("response_store", "get", found, deadline)
            if completion is None:  # the answer expired or was evicted: the vector is an orphan
                with suppress(BackendDown):
                    orphan = self._index.delete([match.point_id])
                    await self._call("vector_index", "delete", orphan, deadline)
                continue
            return Answer(completion, CacheInfo(CacheStatus.SEMANTIC, match.similarity))
        return None

    def _deadline(self) -> float:
        """One budget for all the backend calls of a lookup (or a store), on the loop's clock."""
        return asyncio.get_running_loop().time() + self._policy.timeout

    def _scope(self, request: InferenceRequest, provider: str) -> str:
        return cache_scope(request, provider, self._embedder.identity)

    def _remembered(self, text: str) -> list[float] | None:
        # Keyed by a digest: the LRU holds 32 bytes per prompt, not the prompt.
        digest = hashlib.sha256(text.encode()).digest()
        vector = self._vectors.get(digest)
        if vector is not None:
            self._vectors.move_to_end(digest)
        return vector

    async def _embed(self, text: str, deadline: float, background: bool = False) -> list[float]:
        vector = self._remembered(text)
        if vector is not None:
            return vector
        embedding = self._embedder.embed([text], background=background)
        vectors = await self._call("embedder", "embed", embedding, deadline)
        digest = hashlib.sha256(text.encode()).digest()
        self._vectors[digest] = vectors[0]
        if len(self._vectors) > self._policy.embedding_lru:
            self._vectors.popitem(last=False)
        return vectors[0]

    async def _ensure_index(self, deadline: float) -> None:
        """Creates the collection on first use, and again after the index was unreachable."""
        if not self._index_ready:
            ready = self._index.ensure_ready(self._embedder.dimension)
            await self._call("vector_index", "ensure_ready", ready, deadline)
            self._index_ready = True

    async def _call(self, backend: str, operation: str, call: Awaitable[T], deadline: float) -> T:
        """The call's result; BackendDown (counted and logged) when it failed or the budget
        ending at `deadline` ran out."""
        try:
            with self._tracer.span(f"cache.{backend}.{operation}"):
                async with asyncio.timeout_at(deadline):
                    result = await call
        except EmbedderBusy:
            raise  # declined background work: the embedder is fine
        except Exception as error:
            reason = "timed out" if isinstance(error, TimeoutError) else type(error).__name__
            self._metrics.cache_error(backend, operation)
            self._set_state(backend, "down")
            self._log(backend, self._health[backend].failed(self._clock.now(), reason))
            if backend == "vector_index":
                self._index_ready = False
            raise BackendDown(backend) from None
        self._set_state(backend, "up")
        self._log(backend, self._health[backend].succeeded())
        return result

    def _set_state(self, backend: str, state: str) -> None:
        if self.states[backend] != state:
            self.states[backend] = state
            self._metrics.cache_backend(backend, state == "up")

    @staticmethod
    def _log(backend: str, report: Report | None) -> None:
        if report is None:
            return
        if report.event is HealthEvent.WENT_DOWN:
            log.warning("cache %s is down (%s): lookups miss until it recovers", backend,
                        report.reason)  # fmt: skip
        elif report.event is HealthEvent.STILL_DOWN:
            log.warning("cache %s still down: %d more failed calls (last: %s)", backend,
                        report.failures, report.reason)  # fmt: skip
        else:
            log.warning("cache %s is back after %d failed calls", backend, report.failures)


class BackendDown(Exception):
    """A cache backend failed; the cache answers with a miss."""
