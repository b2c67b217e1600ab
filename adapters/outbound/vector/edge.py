"""The embedded vector index: a Qdrant Edge shard in a local directory, for the no-server mode.

The shard lives in one directory (`edge_config.json`, `wal/`, `segments/`) that only one open
shard may use at a time, so one process owns it. Writes go to the shard's write-ahead log and
survive a restart; `close()` flushes them into the segments. `delete_expired()` (the periodic
sweep) also queues the upkeep the engine never does by itself: vacuuming deleted points out of
the segments and flushing, so neither the segments nor the WAL grow without bound.

All engine calls run in order on one worker thread of the index's own. Note that qdrant-edge
0.9 keeps the GIL while it works, so the event loop still pauses for the length of each call:
under a millisecond for a scoped search or an upsert (the payload indexes keep it so), tens of
milliseconds for a flush or a large sweep, a few hundred for a vacuum of ~20k points. HNSW
indexing is turned off (`indexing_threshold=0`) because building it would hold the GIL for
seconds, and every search is narrowed to one scope by the keyword index anyway.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

from qdrant_edge import (
    CountRequest,
    Distance,
    EdgeConfig,
    EdgeOptimizersConfig,
    EdgeShard,
    EdgeVectorParams,
    FieldCondition,
    Filter,
    MatchValue,
    PayloadSchemaType,
    Point,
    Query,
    QueryRequest,
    RangeFloat,
    UpdateOperation,
)

from adapters.outbound.vector import (
    ENTRY_KEY,
    EXPIRES_AT,
    SCOPE,
    IncompatibleIndex,
    as_floats,
    payload,
    vector_match,
)
from adapters.process.worker import WorkerThread
from application.ports import VectorIndex, VectorMatch, VectorPoint

log = logging.getLogger(__name__)


CONFIG_FILE = "edge_config.json"

PAYLOAD_INDEXES = {
    SCOPE: PayloadSchemaType.Keyword,
    ENTRY_KEY: PayloadSchemaType.Keyword,
    EXPIRES_AT: PayloadSchemaType.Float,
}


class EdgeIndex(VectorIndex):
    """Opens (or creates) the shard under `directory` on `ensure_ready`; raises IncompatibleIndex
    when the shard there holds vectors of another size."""

    def __init__(self, directory: str | Path) -> None:
        self._directory = Path(directory)
        self._worker = WorkerThread("qdrant-edge", f"the vector index at {directory} is closed")
        # Touched only on the worker thread, so a call that timed out (and keeps running there)
        # still leaves them consistent for the next one.
        self._shard: EdgeShard | None = None
        self._dimension = 0

    async def ensure_ready(self, dimension: int) -> None:
        await self._worker.run(self._open, dimension)

    async def search(
        self, vector: Sequence[float], scope: str, now: float, limit: int
    ) -> list[VectorMatch]:
        if limit < 1:
            return []
        return await self._worker.run(self._search, as_floats(vector), scope, now, limit)

    async def upsert(self, point: VectorPoint) -> None:
        stored = Point(point.point_id, as_floats(point.vector), payload(point))
        await self._worker.run(self._update, UpdateOperation.upsert_points([stored]))

    async def delete(self, point_ids: Sequence[str]) -> None:
        if point_ids:
            await self._worker.run(self._update, UpdateOperation.delete_points(list(point_ids)))

    async def delete_expired(self, now: float) -> int:
        removed = await self._worker.run(self._delete_expired, now)
        # Not awaited, as the sweep's caller has a short timeout. It still runs next on the
        # worker thread, ahead of any later call and of close().
        self._worker.submit(self._upkeep, vacuum=removed > 0)
        return removed

    async def close(self) -> None:
        await self._worker.close(self._close)

    # Everything below runs on the worker thread.

    def _open(self, dimension: int) -> None:
        if self._shard is not None:
            if dimension != self._dimension:
                raise self._mismatch(self._dimension, dimension)
            return
        config = EdgeConfig(
            vectors=EdgeVectorParams(size=dimension, distance=Distance.Cosine),
            optimizers=EdgeOptimizersConfig(indexing_threshold=0),
        )
        if _holds_shard(self._directory):
            stored = _stored_dimension(self._directory)
            if stored is not None and stored != dimension:
                raise self._mismatch(stored, dimension)
            shard = EdgeShard.load(str(self._directory), config)
        else:
            self._directory.mkdir(parents=True, exist_ok=True)
            shard = EdgeShard.create(str(self._directory), config)
            log.info("created Qdrant Edge shard at %s (%d dimensions)", self._directory, dimension)
        try:
            indexed = shard.info().payload_schema
            for field, schema in PAYLOAD_INDEXES.items():
                if field not in indexed:
                    shard.update(UpdateOperation.create_field_index(field, schema))
        except BaseException:
            shard.close()
            raise
        self._shard, self._dimension = shard, dimension

    def _search(self, vector: list[float], scope: str, now: float, limit: int) -> list[VectorMatch]:
        request = QueryRequest(
            limit=limit,
            query=Query.Nearest(vector),
            filter=_live_in(scope, now),
            with_payload=True,
            with_vector=False,
        )
        return [vector_match(p.id, p.score, p.payload) for p in self._ready().query(request)]

    def _update(self, operation: UpdateOperation) -> None:
        self._ready().update(operation)

    def _delete_expired(self, now: float) -> int:
        shard, expired = self._ready(), _expired_at(now)
        count = shard.count(CountRequest(exact=True, filter=expired))
        if count:
            shard.update(UpdateOperation.delete_points_by_filter(expired))
        return count

    def _upkeep(self, vacuum: bool) -> None:
        shard = self._shard
        if shard is None:
            return
        try:
            if vacuum:
                shard.optimize()
            shard.flush()
        except Exception:
            log.exception("Qdrant Edge shard at %s: vacuum/flush failed", self._directory)

    def _close(self) -> None:
        shard, self._shard = self._shard, None
        if shard is not None:
            try:
                shard.flush()
            finally:
                shard.close()

    def _ready(self) -> EdgeShard:
        if self._shard is None:
            raise RuntimeError(f"the vector index at {self._directory} is not open: ensure_ready")
        return self._shard

    def _mismatch(self, stored: int, wanted: int) -> IncompatibleIndex:
        return IncompatibleIndex(
            f"the Qdrant Edge shard at {self._directory} holds vectors of size {stored}, but the "
            f"embedder makes vectors of size {wanted}: point the cache at another directory, or "
            "delete this one so it is created again (its cached entries are lost)"
        )


def _live_in(scope: str, now: float) -> Filter:
    return Filter(
        must=[
            FieldCondition(SCOPE, match=MatchValue(scope)),
            FieldCondition(EXPIRES_AT, range=RangeFloat(gt=now)),
        ]
    )


def _expired_at(now: float) -> Filter:
    return Filter(must=[FieldCondition(EXPIRES_AT, range=RangeFloat(lte=now))])


def _holds_shard(directory: Path) -> bool:
    segments = directory / "segments"
    return (directory / CONFIG_FILE).exists() or (segments.is_dir() and any(segments.iterdir()))


def _stored_dimension(directory: Path) -> int | None:
    """The vector size recorded in the shard's config file, if it can be read; otherwise the
    engine's own compatibility check on load has the last word."""
    try:
        size = json.loads((directory / CONFIG_FILE).read_text())["vectors"][""]["size"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return size if isinstance(size, int) else None
