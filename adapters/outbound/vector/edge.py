"""The embedded vector index: a Qdrant Edge shard in a local directory, for the no-server mode.

The shard lives in one directory (`edge_config.json`, `segments/`, and `wal/` for shards created
before the WAL was turned off) that only one open shard may use at a time, so one process owns it
(LOCK_FILE). A new shard has no write-ahead log: writes reach the disk at the next flush (an
upkeep, or `close()`), and a crash loses those since the last one (it is a cache).
`delete_expired()` (the periodic sweep), and every UPKEEP_EVERY writes, also queue the upkeep the
engine never does by itself: vacuuming deleted points out of the segments and flushing, so the
segments do not grow without bound.

All engine calls run in order on one worker thread of the index's own. Note that qdrant-edge
0.9 keeps the GIL while it works, so the event loop still pauses for the length of each call:
under a millisecond for a scoped search or an upsert (the payload indexes keep it so), tens of
milliseconds for a flush or a large sweep, a few hundred for a vacuum of ~20k points. HNSW
indexing is turned off (`indexing_threshold=0`) because building it would hold the GIL for
seconds, and every search is narrowed to one scope by the keyword index anyway.

The engine's files are memory-mapped and sparse (vector chunks and a WAL's segments are
32 MiB holes filled as points arrive), so a full disk would end the process with SIGBUS on the
next write into a hole. Every call therefore first checks that the disk has room for all the
holes plus the next files the engine adds (`MARGIN`); when it has not, the call raises DiskFull
and touches nothing (the cache fails open, and comes back when there is room again). A shard the
engine cannot load is moved aside and a new one created (it is only a cache); a directory deleted
while serving is noticed on the next call (IndexLost) and created again on the one after.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path

from qdrant_edge import (
    CountRequest,
    Direction,
    Distance,
    EdgeConfig,
    EdgeOptimizersConfig,
    EdgeShard,
    EdgeVectorParams,
    FieldCondition,
    Filter,
    MatchValue,
    OrderBy,
    PayloadSchemaType,
    Point,
    Query,
    QueryRequest,
    RangeFloat,
    ScrollRequest,
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
LOCK_FILE = "llm-proxy.lock"  # the engine locks only a WAL, and new shards have none
MIB = 1024 * 1024
# Room for the files the engine adds as it grows (a WAL segment, a vector chunk, a payload page:
# up to 32 MiB each), on top of the holes in the files it has.
MARGIN = 96 * MIB
NEW_SHARD = 128 * MIB  # the holes of a new shard's files (measured: 117 MiB at 384 dimensions)
RECOUNT_EVERY = 64  # writes between two counts of the holes (a walk over ~50 files)
# Writes between two upkeeps (vacuum, flush) besides the sweep's: the WAL's pages and deleted points
# stay in memory until then, so at a steady rate of stores and evictions the RSS is a sawtooth of
# about this many writes (~4 KiB each) instead of a climb until the next sweep.
UPKEEP_EVERY = 4096


class DiskFull(RuntimeError):
    """The disk under the index has no room for the engine to write safely."""


class IndexLost(RuntimeError):
    """The index's directory was deleted while it was open; the next ensure_ready recreates it."""


PAYLOAD_INDEXES = {
    SCOPE: PayloadSchemaType.Keyword,
    ENTRY_KEY: PayloadSchemaType.Keyword,
    EXPIRES_AT: PayloadSchemaType.Float,
}


class EdgeIndex(VectorIndex):
    """Opens (or creates) the shard under `directory` on `ensure_ready`; raises IncompatibleIndex
    when the shard there holds vectors of another size. `max_points`: each upkeep deletes the
    points beyond it, those expiring first (the vectors the cache failed to delete with their
    evicted answers, such as an answer evicted before its vector was indexed)."""

    def __init__(self, directory: str | Path, max_points: int | None = None) -> None:
        self._directory = Path(directory)
        self._max_points = max_points
        self._worker = WorkerThread("qdrant-edge", f"the vector index at {directory} is closed")
        # Touched only on the worker thread, so a call that timed out (and keeps running there)
        # still leaves them consistent for the next one.
        self._shard: EdgeShard | None = None
        self._dimension = 0
        self._lock: int | None = None  # the descriptor holding LOCK_FILE's flock
        self._holes = NEW_SHARD  # bytes the shard's files may still take without growing
        self._writes = 0
        self._deleted = 0  # points deleted since the last vacuum
        self._full = False  # the last disk check found no room

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
            deleting = UpdateOperation.delete_points(list(point_ids))
            await self._worker.run(self._delete, deleting, len(point_ids))

    async def delete_expired(self, now: float) -> int:
        removed = await self._worker.run(self._delete_expired, now)
        # Not awaited, as the sweep's caller has a short timeout. It still runs next on the
        # worker thread, ahead of any later call and of close().
        self._worker.submit(self._upkeep)
        return removed

    async def close(self) -> None:
        await self._worker.close(self._close)

    # Everything below runs on the worker thread.

    def _open(self, dimension: int) -> None:
        if self._shard is not None:
            self._check_disk()
            if dimension != self._dimension:
                raise self._mismatch(self._dimension, dimension)
            return
        if _holds_shard(self._directory):
            stored = _stored_dimension(self._directory)
            if stored is not None and stored != dimension:
                raise self._mismatch(stored, dimension)
            self._holes = _holes(self._directory)
            self._check_disk()
            self._take_lock()
            shard = self._load(dimension)
        else:
            self._holes = NEW_SHARD
            self._check_disk()
            self._take_lock()
            shard = self._create(dimension)
        try:
            indexed = shard.info().payload_schema
            for field, schema in PAYLOAD_INDEXES.items():
                if field not in indexed:
                    shard.update(UpdateOperation.create_field_index(field, schema))
        except BaseException:
            shard.close()
            self._release_lock()
            raise
        self._shard, self._dimension = shard, dimension
        self._holes, self._writes = _holes(self._directory), 0

    def _create(self, dimension: int) -> EdgeShard:
        try:
            shard = EdgeShard.create(str(self._directory), _config(dimension, wal=False))
        except BaseException:
            self._release_lock()
            raise
        log.info("created Qdrant Edge shard at %s (%d dimensions)", self._directory, dimension)
        return shard

    def _take_lock(self) -> None:
        """Holds LOCK_FILE in the directory (created) while the shard is open: a second process
        opening it would corrupt it."""
        self._directory.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(self._directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise self._in_use() from None
        self._lock = descriptor

    def _release_lock(self) -> None:
        descriptor, self._lock = self._lock, None
        if descriptor is not None:
            os.close(descriptor)

    def _in_use(self) -> RuntimeError:
        where = self._directory
        return RuntimeError(f"the Qdrant Edge shard at {where} is open in another process")

    def _load(self, dimension: int) -> EdgeShard:
        """Loads the shard; one the engine cannot read is moved aside and a new one created."""
        try:
            return EdgeShard.load(str(self._directory), _config(dimension))
        except Exception as error:
            if "WouldBlock" in str(error):  # its WAL is locked: another process has it open
                self._release_lock()
                raise self._in_use() from None
            self._release_lock()
            aside = self._directory.with_name(f"{self._directory.name}.corrupt-{time.time_ns()}")
            log.warning(
                "the Qdrant Edge shard at %s cannot be loaded (%s): moved to %s, starting empty",
                self._directory, str(error)[:200], aside,
            )  # fmt: skip
            self._directory.rename(aside)
            self._holes = NEW_SHARD
            self._check_disk()
            self._take_lock()
            return self._create(dimension)

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
        shard = self._ready()
        self._writes += 1
        if self._writes % RECOUNT_EVERY == 0:
            self._holes = _holes(self._directory)
            self._check_disk()
        shard.update(operation)
        if self._writes % UPKEEP_EVERY == 0:
            self._worker.submit(self._upkeep)  # next on this thread, after the calls queued

    def _delete(self, operation: UpdateOperation, count: int) -> None:
        self._update(operation)
        self._deleted += count

    def _delete_expired(self, now: float) -> int:
        shard, expired = self._ready(), _expired_at(now)
        count = shard.count(CountRequest(exact=True, filter=expired))
        if count:
            self._update(UpdateOperation.delete_points_by_filter(expired))
            self._deleted += count
        return count

    def _upkeep(self) -> None:
        """Vacuums deleted points (the engine rewrites a segment: it needs room for a copy of
        the segments), then flushes."""
        shard = self._shard
        if shard is None:
            return
        try:
            self._holes = _holes(self._directory)
            if self._room() < 0:
                return  # the calls say so (DiskFull); a flush could write into a hole
            self._trim(shard)
            if self._deleted and self._room() >= _size(self._directory / "segments"):
                shard.optimize()
                self._deleted = 0
                self._holes = _holes(self._directory)
            shard.flush()
        except Exception:
            log.exception("Qdrant Edge shard at %s: vacuum/flush failed", self._directory)

    def _trim(self, shard: EdgeShard) -> None:
        if self._max_points is None:
            return
        excess = shard.count(CountRequest(exact=True)) - self._max_points
        if excess <= 0:
            return
        oldest = ScrollRequest(
            limit=excess, order_by=OrderBy(EXPIRES_AT, Direction.Asc), with_payload=False
        )
        records, _ = shard.scroll(oldest)
        shard.update(UpdateOperation.delete_points([r.id for r in records]))
        self._deleted += len(records)
        log.info("Qdrant Edge shard at %s: %d points over %d deleted, the first to expire",
                 self._directory, len(records), self._max_points)  # fmt: skip

    def _close(self) -> None:
        shard, self._shard = self._shard, None
        try:
            if shard is not None:
                try:
                    shard.flush()
                finally:
                    shard.close()
        finally:
            self._release_lock()

    def _ready(self) -> EdgeShard:
        if self._shard is None:
            raise RuntimeError(f"the vector index at {self._directory} is not open: ensure_ready")
        if not self._directory.is_dir():
            self._lose()
        self._check_disk()
        return self._shard

    def _room(self) -> int:
        """Free bytes beyond what the engine may write without warning (holes and MARGIN)."""
        where = self._directory if self._directory.is_dir() else self._directory.parent
        while not where.is_dir() and where != where.parent:
            where = where.parent
        return shutil.disk_usage(where).free - self._holes - MARGIN

    def _check_disk(self) -> None:
        """Raises DiskFull when the disk lacks room; says so once when it runs out, once when
        there is room again."""
        room = self._room()
        if room >= 0:
            if self._full:
                self._full = False
                log.warning("the disk under %s has room again: the vector index is back",
                            self._directory)  # fmt: skip
            return
        message = (
            f"the disk under {self._directory} has {(room + self._holes + MARGIN) // MIB} MiB "
            f"free; the vector index needs {(self._holes + MARGIN) // MIB} MiB to write safely "
            "(its files are memory-mapped): semantic lookups are off until there is room"
        )
        if not self._full:
            self._full = True
            log.warning("%s", message)
        raise DiskFull(message)

    def _lose(self) -> None:
        shard, self._shard = self._shard, None
        log.warning(
            "the Qdrant Edge shard at %s was deleted while open: it is created again, empty",
            self._directory,
        )
        if shard is not None:
            try:
                shard.close()
            except Exception as error:
                log.info("closing the deleted shard at %s: %s", self._directory, error)
        self._release_lock()
        raise IndexLost(f"the vector index directory {self._directory} was deleted")

    def _mismatch(self, stored: int, wanted: int) -> IncompatibleIndex:
        return IncompatibleIndex(
            f"the Qdrant Edge shard at {self._directory} holds vectors of size {stored}, but the "
            f"embedder makes vectors of size {wanted}: point the cache at another directory, or "
            "delete this one so it is created again (its cached entries are lost)"
        )


def _config(dimension: int, wal: bool | None = None) -> EdgeConfig:
    """`wal=False` for a new shard: no write-ahead log. It is a cache: the writes since the last
    flush (an upkeep, every 4,096 writes, or close) are lost in a crash, and the WAL's two 32 MiB
    memory-mapped segments (their pages resident until a flush, their holes a SIGBUS risk) are
    saved. None when loading: a shard created with a WAL keeps it (the engine fixes the choice at
    creation and refuses another)."""
    return EdgeConfig(
        vectors=EdgeVectorParams(size=dimension, distance=Distance.Cosine),
        optimizers=EdgeOptimizersConfig(indexing_threshold=0),
        wal_enabled=wal,
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


def _holes(directory: Path) -> int:
    """Bytes the shard's (sparse, memory-mapped) files may still take: size minus allocation."""
    holes = 0
    for root, _, files in os.walk(directory):
        for name in files:
            with suppress(FileNotFoundError):  # removed by the engine meanwhile
                stat = os.stat(os.path.join(root, name))
                holes += max(0, stat.st_size - stat.st_blocks * 512)
    return holes


def _size(directory: Path) -> int:
    """Bytes allocated to the files under `directory`."""
    size = 0
    for root, _, files in os.walk(directory):
        for name in files:
            with suppress(FileNotFoundError):  # removed by the engine meanwhile
                size += os.stat(os.path.join(root, name)).st_blocks * 512
    return size


def _stored_dimension(directory: Path) -> int | None:
    """The vector size recorded in the shard's config file, if it can be read; otherwise the
    engine's own compatibility check on load has the last word."""
    try:
        size = json.loads((directory / CONFIG_FILE).read_text())["vectors"][""]["size"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return size if isinstance(size, int) else None
