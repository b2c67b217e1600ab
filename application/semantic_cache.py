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
    VectorIndex,
    VectorPoint,
)
from domain.cache_policy import cache_scope, entry_key, interchangeable, point_id
from domain.model import Answer, CacheInfo, CacheStatus, Completion, InferenceRequest

log = logging.getLogger(__name__)
T = TypeVar("T")
CANDIDATES = 5


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
    ) -> None:
        self._embedder = embedder
        self._index = index
        self._store = store
        self._policy = policy
        self._clock = clock
        self._metrics = metrics
        self._vectors: OrderedDict[str, list[float]] = OrderedDict()
        self._index_ready = False

    async def lookup(self, request: InferenceRequest, provider: str) -> Answer | None:
        try:
            return await self._lookup(request, provider)
        except BackendDown:
            return None

    async def store(self, request: InferenceRequest, completion: Completion) -> None:
        scope, prompt = self._scope(request, completion.provider), request.messages[-1].content
        key = entry_key(scope, prompt)
        ttl = self._policy.ttl
        with suppress(BackendDown):
            await self._call("response_store", "put", self._store.put(key, completion, ttl))
            vector = await self._embed(prompt)
            await self._ensure_index()
            point = VectorPoint(point_id(key), vector, scope, key, prompt, self._clock.wall() + ttl)
            await self._call("vector_index", "upsert", self._index.upsert(point))

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
            async with asyncio.timeout(self._policy.timeout):
                return await call
        except Exception as error:
            reason = "timed out" if isinstance(error, TimeoutError) else type(error).__name__
            log.warning("cache %s %s failed (%s): treated as a miss", backend, operation, reason)
            self._metrics.cache_error(backend, operation)
            if backend == "vector_index":
                self._index_ready = False
            raise BackendDown(backend) from None


class BackendDown(Exception):
    """A cache backend failed; the cache answers with a miss."""
