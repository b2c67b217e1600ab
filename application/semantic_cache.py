"""The semantic cache use case: exact tier, then embedding -> vector search -> response store.

It fails open: a backend that errors or is slower than `timeout` turns into a miss (counted and
logged), never a failed request.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable
from contextlib import suppress
from dataclasses import dataclass
from typing import TypeVar

from application.ports import (
    Clock,
    Embedder,
    Metrics,
    ResponseCache,
    ResponseStore,
    Sleeper,
    Tracer,
    VectorIndex,
    VectorPoint,
)
from domain.cache_policy import cache_scope, entry_key, interchangeable, point_id
from domain.model import Answer, CacheInfo, CacheStatus, Completion, InferenceRequest

log = logging.getLogger(__name__)
T = TypeVar("T")
CANDIDATES = 5
BACKENDS = ("embedder", "vector_index", "response_store")


@dataclass(frozen=True, slots=True)
class CachePolicy:
    threshold: float
    ttl: float
    timeout: float
    embedding_lru: int = 1024


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
        self._vectors: OrderedDict[str, list[float]] = OrderedDict()
        self._index_ready = False
        self.states = dict.fromkeys(BACKENDS, "unknown")

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
        ttl = self._policy.ttl
        with self._tracer.span("cache.store"), suppress(BackendDown):
            await self._call("response_store", "put", self._store.put(key, completion, ttl))
            vector = await self._embed(prompt)
            await self._ensure_index()
            point = VectorPoint(point_id(key), vector, scope, key, prompt, self._clock.wall() + ttl)
            await self._call("vector_index", "upsert", self._index.upsert(point))

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
            await self._ensure_index()
            now = self._clock.wall()
            return await self._call("vector_index", "sweep", self._index.delete_expired(now))
        except BackendDown:
            return 0

    async def _lookup(self, request: InferenceRequest, provider: str) -> Answer | None:
        scope, prompt = self._scope(request, provider), request.messages[-1].content
        key = entry_key(scope, prompt)
        completion = await self._call("response_store", "get", self._store.get(key))
        if completion is not None:
            return Answer(completion, CacheInfo(CacheStatus.EXACT, 1.0))
        vector = await self._embed(prompt)
        await self._ensure_index()
        search = self._index.search(vector, scope, self._clock.wall(), CANDIDATES)
        for match in await self._call("vector_index", "search", search):
            if match.similarity < self._policy.threshold:
                break
            if not interchangeable(prompt, match.text):
                continue
            found = self._store.get(match.entry_key)
            completion = await self._call("response_store", "get", found)
            if completion is None:  # the answer expired or was evicted: the vector is an orphan
                with suppress(BackendDown):
                    orphan = self._index.delete([match.point_id])
                    await self._call("vector_index", "delete", orphan)
                continue
            return Answer(completion, CacheInfo(CacheStatus.SEMANTIC, match.similarity))
        return None

    def _scope(self, request: InferenceRequest, provider: str) -> str:
        return cache_scope(request, provider, self._embedder.identity)

    async def _embed(self, text: str) -> list[float]:
        vector = self._vectors.get(text)
        if vector is not None:
            self._vectors.move_to_end(text)
            return vector
        vectors = await self._call("embedder", "embed", self._embedder.embed([text]))
        self._vectors[text] = vectors[0]
        if len(self._vectors) > self._policy.embedding_lru:
            self._vectors.popitem(last=False)
        return vectors[0]

    async def _ensure_index(self) -> None:
        """Creates the collection on first use, and again after the index was unreachable."""
        if not self._index_ready:
            ready = self._index.ensure_ready(self._embedder.dimension)
            await self._call("vector_index", "ensure_ready", ready)
            self._index_ready = True

    async def _call(self, backend: str, operation: str, call: Awaitable[T]) -> T:
        """The call's result; BackendDown (counted and logged) when it failed or was too slow."""
        try:
            with self._tracer.span(f"cache.{backend}.{operation}"):
                async with asyncio.timeout(self._policy.timeout):
                    result = await call
        except Exception as error:
            reason = "timed out" if isinstance(error, TimeoutError) else type(error).__name__
            log.warning("cache %s %s failed (%s): treated as a miss", backend, operation, reason)
            self._metrics.cache_error(backend, operation)
            self._set_state(backend, "down")
            if backend == "vector_index":
                self._index_ready = False
            raise BackendDown(backend) from None
        self._set_state(backend, "up")
        return result

    def _set_state(self, backend: str, state: str) -> None:
        if self.states[backend] != state:
            self.states[backend] = state
            self._metrics.cache_backend(backend, state == "up")
            if state == "up":
                log.info("cache %s is back", backend)


class BackendDown(Exception):
    """A cache backend failed; the cache answers with a miss."""
