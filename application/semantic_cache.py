"""The semantic cache use case: exact tier, then embedding -> vector search -> response store.

The semantic tier only judges what the embedder sees: a prompt longer than its input window is
served by the exact tier alone. A candidate above the threshold is served only when
`domain.same_question` judges it the same question.

It fails open: a backend that errors, or a lookup (or store) that takes longer than `timeout`
over all its backend calls, turns into a miss (counted and logged), never a failed request.

Under load, the embedder is shared, never skipped lightly: a lookup's text joins the embedder's
next batch and skips the semantic tier ("embedder_busy") only when its vector would not be ready
within the budget. A store writes the answer at once (the exact tier) and indexes it with the
vector its lookup computed; an answer without one (its lookup skipped the semantic tier, or was
not made) waits in a bounded backlog that `index_forever` embeds in batches whenever no lookup
waits (application/index_backlog.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from typing import TypeVar

from application.index_backlog import IndexBacklog, Unindexed
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
from domain.backend_health import BackendHealth, HealthEvent, Report
from domain.cache_policy import cache_scope, entry_key, point_id
from domain.model import Answer, CacheInfo, CacheStatus, Completion, InferenceRequest
from domain.same_question import QuestionJudge

log = logging.getLogger(__name__)
T = TypeVar("T")
CANDIDATES = 5
BACKENDS = ("embedder", "vector_index", "response_store")
SEARCH_SHARE = 0.2  # of the budget, left for the search and the answer once the vector is ready
FAILURE_PAUSE = 1.0  # seconds the indexer rests after a backend failed


@dataclass(frozen=True, slots=True)
class CachePolicy:
    threshold: float
    ttl: float
    timeout: float
    index_backlog: int = 10_000  # stored answers waiting for their vector, at most
    index_batch: int = 64  # texts the indexer gives the embedder at once
    embedding_lru: int = 1024
    error_summary_every: float = 60.0


class SemanticCache(ResponseCache):
    def __init__(
        self,
        embedder: Embedder,
        index: VectorIndex,
        store: ResponseStore,
        policy: CachePolicy,
        judge: QuestionJudge,
        clock: Clock,
        metrics: Metrics,
        tracer: Tracer,
    ) -> None:
        self._embedder = embedder
        self._index = index
        self._store = store
        self._policy = policy
        self._judge = judge
        self._clock = clock
        self._metrics = metrics
        self._tracer = tracer
        # by sha256 of scope and text: the scope holds the tenant, so one tenant's texts never
        # make another's lookups faster (a timing side channel)
        self._vectors: OrderedDict[bytes, list[float]] = OrderedDict()
        self._index_ready = False
        self._backlog = IndexBacklog(policy.index_backlog, metrics)
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
            seen = self._judge.embedding_text(prompt)
            if not self._embedder.fits(seen):
                return  # exact tier only: its vector would stand for a text it never saw whole
            entry = Unindexed(seen, scope, key, prompt, self._clock.wall() + ttl)
            vector = self._remembered(scope, seen)  # computed by this request's lookup
            if vector is None:
                self._backlog.add(entry)
                return
            try:
                await self._ensure_index(deadline)
                await self._call("vector_index", "upsert", self._upsert(entry, vector), deadline)
            except BackendDown:
                self._backlog.failed([entry])  # tried again by the indexer

    async def index_forever(self, sleeper: Sleeper) -> None:
        """Indexes the backlog as it fills, until cancelled; rests FAILURE_PAUSE after a
        backend failed."""
        while True:
            await self._backlog.filled()
            if not await self._index_batch():
                await sleeper.sleep(FAILURE_PAUSE)

    async def index_pending(self, within: float | None = None) -> int:
        """Indexes the backlog until it is empty, a backend fails, or `within` seconds passed;
        returns how many stored answers still wait for their vector."""
        with suppress(TimeoutError):
            async with asyncio.timeout(within):
                while len(self._backlog) and await self._index_batch():
                    pass
        return len(self._backlog)

    async def finish_indexing(self, within: float) -> None:
        """At shutdown: indexes what waits for up to `within` seconds, then gives the rest up
        (counted; their answers stay in the exact tier)."""
        if await self.index_pending(within):
            dropped = self._backlog.clear("shutdown")
            log.warning(
                "%d stored answers were not indexed within %.1fs of shutdown: the exact tier "
                "serves them, the semantic tier will not", dropped, within,
            )  # fmt: skip

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
        asked = self._judge.read(prompt)  # once for the embedder and every candidate
        seen = self._judge.embedding_text(asked)
        if not self._embedder.fits(seen):
            self._metrics.cache_semantic_skip("beyond_window")
            return None
        vector = self._remembered(scope, seen)
        if vector is None:
            vector = await self._lookup_vector(scope, seen, deadline)
            if vector is None:
                return None
        await self._ensure_index(deadline)
        search = self._index.search(vector, scope, self._clock.wall(), CANDIDATES)
        for match in await self._call("vector_index", "search", search, deadline):
            if match.similarity < self._policy.threshold:
                break
            if not self._judge.same(asked, match.text, match.similarity, self._policy.threshold):
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

    async def _lookup_vector(self, scope: str, text: str, deadline: float) -> list[float] | None:
        """The text's vector, or None (counted) when the embedder cannot have it ready with
        SEARCH_SHARE of the budget left: it is shared by the lookups in flight, which queue for
        its next batch."""
        ready_by = deadline - SEARCH_SHARE * self._policy.timeout
        loop = asyncio.get_running_loop()
        if loop.time() + self._embedder.expected_wait() <= ready_by:
            with suppress(EmbedderLate):
                vectors = await self._call("embedder", "embed", self._embedder.embed([text]),
                                           ready_by)  # fmt: skip
                self._remember(scope, text, vectors[0])
                return vectors[0]
        self._metrics.cache_semantic_skip("embedder_busy")
        return None

    async def _index_batch(self) -> bool:
        """Embeds and indexes up to `index_batch` of the oldest entries of the backlog; False
        when a backend failed (the entries not indexed go back, see IndexBacklog.failed)."""
        taken = self._backlog.take(self._policy.index_batch)
        now = self._clock.wall()
        batch = [e for e in taken if e.expires_at > now]  # the others' answers are gone
        indexed = 0
        try:
            known = [self._remembered(e.scope, e.text) for e in batch]
            missing = [e.text for e, v in zip(batch, known, strict=True) if v is None]
            fresh: Iterator[list[float]] = iter(())
            if missing:  # no budget: background work waits for the lookups
                embedding = self._embedder.embed(missing, background=True)
                fresh = iter(await self._call("embedder", "embed", embedding, None))
            vectors = [v if v is not None else next(fresh) for v in known]
            await self._ensure_index(self._deadline())
            for entry, vector in zip(batch, vectors, strict=True):
                upsert = self._upsert(entry, vector)
                await self._call("vector_index", "upsert", upsert, self._deadline())
                indexed += 1
        except BackendDown:
            self._backlog.failed(batch[indexed:])
            return False
        except BaseException:  # cancelled (shutdown, the end of `within`): nothing is lost
            self._backlog.put_back(batch[indexed:])
            raise
        finally:
            self._backlog.settled(taken)
        return True

    def _upsert(self, entry: Unindexed, vector: list[float]) -> Awaitable[None]:
        id_ = point_id(entry.entry_key)
        return self._index.upsert(
            VectorPoint(id_, vector, entry.scope, entry.entry_key, entry.prompt, entry.expires_at)
        )

    def _remembered(self, scope: str, text: str) -> list[float] | None:
        vector = self._vectors.get(_digest(scope, text))
        if vector is not None:
            self._vectors.move_to_end(_digest(scope, text))
        return vector

    def _remember(self, scope: str, text: str, vector: list[float]) -> None:
        self._vectors[_digest(scope, text)] = vector
        if len(self._vectors) > self._policy.embedding_lru:
            self._vectors.popitem(last=False)

    async def _ensure_index(self, deadline: float) -> None:
        """Creates the collection on first use, and again after the index was unreachable."""
        if not self._index_ready:
            ready = self._index.ensure_ready(self._embedder.dimension)
            await self._call("vector_index", "ensure_ready", ready, deadline)
            self._index_ready = True

    async def _call(
        self, backend: str, operation: str, call: Awaitable[T], deadline: float | None
    ) -> T:
        """The call's result; BackendDown (counted and logged) when it failed or the budget
        ending at `deadline` ran out. An embedder that tells its queue (a local model) and
        ran out of budget was busy, not broken: EmbedderLate, not counted."""
        try:
            with self._tracer.span(f"cache.{backend}.{operation}"):
                async with asyncio.timeout_at(deadline):
                    result = await call
        except Exception as error:
            late = backend == "embedder" and isinstance(error, TimeoutError)
            if late and self._embedder.expected_wait() > 0:
                raise EmbedderLate from None
            reason = "timed out" if isinstance(error, TimeoutError) else type(error).__name__
            self._metrics.cache_error(backend, operation)
            self._set_state(backend, "down")
            self._log(backend, self._health[backend].failed(self._clock.now(), reason))
            if backend == "vector_index":
                self._index_ready = False
            raise BackendDown(backend) from None
        self._set_state(backend, "up")
        self._log(backend, self._health[backend].succeeded(self._clock.now()))
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
        elif report.event is HealthEvent.FLAPPING:
            log.warning("cache %s is flapping: down %d more times, %d failed calls (last: %s); "
                        "those lookups missed", backend, report.outages, report.failures,
                        report.reason)  # fmt: skip
        else:
            log.warning("cache %s is back after %d failed calls", backend, report.failures)


class BackendDown(Exception):
    """A cache backend failed; the cache answers with a miss."""


class EmbedderLate(Exception):
    """The embedder's queue kept a lookup's text past its budget."""


def _digest(scope: str, text: str) -> bytes:
    """The embedding LRU's key: 32 bytes a prompt, not the prompt."""
    return hashlib.sha256(f"{scope}\n{text}".encode()).digest()
