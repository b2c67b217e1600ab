"""The embedded response store: SQLite (WAL) on local disk, for the no-server mode.

One file, `<directory>/responses.sqlite3`, survives restarts. Size is bounded by `max_entries` and
by `max_bytes` of stored values: a put that goes over removes expired entries first, then the least
recently used ones. Expired entries read as misses and are removed. All SQLite work runs on one
worker thread of the store's own, so the event loop never blocks on disk and the connection is
never shared between threads.

In front of it, an in-process LRU of the most recently stored or read answers (up to
`FRONT_ENTRIES`, each at most `FRONT_MAX_CHARS` of content, with the same expiry) serves a
repeated prompt without the hop to that thread: an exact hit then costs no thread switch
(docs/benchmarks.md). With several processes on one file, each has its own front; an answer
another process stored is found in SQLite, then kept in this one's front.

Disk faults fail open: a store that cannot be opened (a full disk) starts closed and every call
tries to open it again (failing until there is room); a full disk under traffic fails the puts
(SQLite's own error), the gets keep working. A file deleted or replaced while open (CACHE_DIR
removed under the proxy) is noticed by the next call, which fails with StoreLost after opening a
fresh file, so nothing more is written to a file that no longer has a name.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from adapters.outbound.store import codec
from adapters.process.worker import WorkerThread
from application.ports import ResponseStore
from domain.model import Completion

log = logging.getLogger(__name__)


FILE_NAME = "responses.sqlite3"
SCHEMA_VERSION = 1
DEFAULT_MAX_ENTRIES = 100_000
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
BUSY_TIMEOUT = 1.0  # seconds to wait for another process holding the write lock
FRONT_ENTRIES = 1024
FRONT_MAX_CHARS = 16 * 1024  # longer answers are read from SQLite: the front stays ~16 MiB at most

# `totals` is kept by triggers, in the same transaction as every change, so the bounds are checked
# without scanning the table and stay right even if another process writes to the same file.
_SCHEMA = f"""
DROP TABLE IF EXISTS responses;
DROP TABLE IF EXISTS totals;
CREATE TABLE responses (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    expires_at REAL NOT NULL,
    used INTEGER NOT NULL
);
CREATE INDEX responses_expires_at ON responses (expires_at);
CREATE INDEX responses_used ON responses (used);
CREATE TABLE totals (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    entries INTEGER NOT NULL,
    bytes INTEGER NOT NULL
);
INSERT INTO totals VALUES (0, 0, 0);
CREATE TRIGGER responses_inserted AFTER INSERT ON responses BEGIN
    UPDATE totals SET entries = entries + 1, bytes = bytes + length(NEW.value);
END;
CREATE TRIGGER responses_deleted AFTER DELETE ON responses BEGIN
    UPDATE totals SET entries = entries - 1, bytes = bytes - length(OLD.value);
END;
CREATE TRIGGER responses_updated AFTER UPDATE OF value ON responses BEGIN
    UPDATE totals SET bytes = bytes - length(OLD.value) + length(NEW.value);
END;
PRAGMA user_version = {SCHEMA_VERSION};
"""


class StoreLost(RuntimeError):
    """The store's file was deleted or replaced while open; a fresh one is open now."""


@dataclass(frozen=True, slots=True)
class StoreUsage:
    entries: int
    value_bytes: int


class EmbeddedStore(ResponseStore):
    """Opens (or creates) the store under `directory` on construction, which waits for the disk:
    build it at startup. A file that is not a readable SQLite database is moved aside and a fresh
    one started (it is only a cache). `clock` gives wall-clock seconds since the epoch.
    `on_evict` is called with the keys a put evicted, in the background (the composition root
    deletes their vectors, so that `max_entries` bounds the vector index too)."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_bytes: int = DEFAULT_MAX_BYTES,
        clock: Callable[[], float] = time.time,
        on_evict: Callable[[list[str]], Awaitable[None]] | None = None,
    ) -> None:
        if max_entries < 1 or max_bytes < 1:
            raise ValueError(
                f"max_entries and max_bytes must be positive, got {max_entries}, {max_bytes}"
            )
        self.path = Path(directory) / FILE_NAME
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._clock = clock
        self._on_evict = on_evict
        self._evicting: set[asyncio.Task[None]] = set()
        self._worker = WorkerThread("embedded-store", "the embedded response store is closed")
        self._front: OrderedDict[str, tuple[Completion, float]] = OrderedDict()
        self._front_entries = min(FRONT_ENTRIES, max_entries)
        self._touched: set[str] = set()  # front hits whose SQLite `used` is not yet updated
        self._db: sqlite3.Connection | None = None
        self._file: tuple[int, int] | None = None  # device and inode of the open file
        try:
            self._worker.call(self._open)
        except (sqlite3.Error, OSError) as error:  # a full disk: fail open, retried on use
            log.warning("the embedded response store at %s cannot be opened (%s): answers are "
                        "not cached until it can", self.path, error)  # fmt: skip
        except BaseException:
            self._worker.stop()
            raise

    async def get(self, key: str) -> Completion | None:
        now = self._clock()
        front = self._front.get(key)
        if front is not None:
            if front[1] > now:
                self._front.move_to_end(key)
                self._touched.add(key)
                return front[0]
            del self._front[key]
        found = await self._worker.run(self._get, key, now)
        if found is None:
            return None
        completion = codec.decode(found[0])
        if completion is None:
            log.warning("unreadable embedded store entry %s: treated as a miss", key)
            return None
        self._remember(key, completion, found[1])
        return completion

    async def put(self, key: str, completion: Completion, ttl: float) -> None:
        """Stores for `ttl` seconds; a `ttl` <= 0, or a value larger than `max_bytes`, stores
        nothing (and drops what was stored under `key`)."""
        now = self._clock()
        value = codec.encode(completion)
        self._front.pop(key, None)
        touched, self._touched = self._touched, set()
        evicted = await self._worker.run(self._put, key, value, now + ttl, now, touched)
        for gone in evicted:
            self._front.pop(gone, None)
        if evicted and self._on_evict is not None:  # in the background: not the put's time
            task = asyncio.create_task(self._forget(self._on_evict, evicted))
            self._evicting.add(task)
            task.add_done_callback(self._evicting.discard)
        if ttl > 0 and len(value) <= self._max_bytes:
            self._remember(key, completion, now + ttl)

    async def delete(self, key: str) -> None:
        self._front.pop(key, None)
        await self._worker.run(self._delete, key)

    @staticmethod
    async def _forget(on_evict: Callable[[list[str]], Awaitable[None]], keys: list[str]) -> None:
        try:
            await on_evict(keys)
        except Exception as error:  # the vector index reports its own failures
            log.debug("the vectors of %d evicted entries not deleted: %s", len(keys), error)

    def _remember(self, key: str, completion: Completion, expires_at: float) -> None:
        if len(completion.content) > FRONT_MAX_CHARS:
            return
        self._front[key] = (completion, expires_at)
        self._front.move_to_end(key)
        if len(self._front) > self._front_entries:
            self._front.popitem(last=False)

    async def usage(self) -> StoreUsage:
        return await self._worker.run(self._usage)

    async def close(self) -> None:
        await asyncio.gather(*self._evicting)
        self._front.clear()
        touched, self._touched = self._touched, set()
        if touched:  # the LRU order survives a restart
            with suppress(RuntimeError, sqlite3.Error):  # closed already, or the disk is full
                await self._worker.run(self._touch, touched)
        await self._worker.close(self._close)

    # Everything below runs on the worker thread.

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            db = _connect(self.path)
        except sqlite3.DatabaseError as error:
            if error.sqlite_errorcode not in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
                raise  # a full disk, a lock: the file is fine, the next call tries again
            aside = self.path.with_name(f"{self.path.name}.corrupt-{time.time_ns()}")
            log.warning("%s is unreadable (%s): moved to %s", self.path, error, aside)
            self.path.rename(aside)
            for suffix in ("-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            db = _connect(self.path)
        stat = os.stat(self.path)
        self._db, self._file = db, (stat.st_dev, stat.st_ino)
        return db

    @property
    def _conn(self) -> sqlite3.Connection:
        """The open connection: opened again when it is not (raising what opening raises), or
        when the file was deleted or replaced (then raising StoreLost)."""
        if self._db is None:
            return self._open()
        try:
            stat = os.stat(self.path)
            found: tuple[int, int] | None = (stat.st_dev, stat.st_ino)
        except FileNotFoundError:
            found = None
        if found == self._file:
            return self._db
        log.warning("the embedded response store %s was deleted or replaced while open: "
                    "opening it again (its entries are gone)", self.path)  # fmt: skip
        self._close()
        self._open()
        raise StoreLost(f"{self.path} was deleted or replaced while open")

    def _close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.close()

    def _get(self, key: str, now: float) -> tuple[bytes, float] | None:
        db = self._conn
        row = db.execute("SELECT value, expires_at FROM responses WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        value, expires_at = row
        if expires_at <= now:
            db.execute("DELETE FROM responses WHERE key = ? AND expires_at <= ?", (key, now))
            return None
        db.execute(f"UPDATE responses SET used = {_NEXT_USE} WHERE key = ?", (key,))
        return bytes(value), expires_at

    def _put(
        self, key: str, value: bytes, expires_at: float, now: float, touched: set[str]
    ) -> list[str]:
        """Stores; returns the keys evicted. `touched`: keys read from the front since the last
        put, marked used first so the LRU order is the one the readers saw."""
        db = self._conn
        if len(value) > self._max_bytes:
            log.warning("a response of %d bytes exceeds max_bytes: not stored", len(value))
            db.execute("DELETE FROM responses WHERE key = ?", (key,))
            return []
        if expires_at <= now:
            db.execute("DELETE FROM responses WHERE key = ?", (key,))
            return []
        with _transaction(db):
            _touch(db, touched)
            db.execute(
                "INSERT INTO responses (key, value, expires_at, used) "
                f"VALUES (?, ?, ?, {_NEXT_USE}) ON CONFLICT (key) DO UPDATE SET "
                "value = excluded.value, expires_at = excluded.expires_at, used = excluded.used",
                (key, value, expires_at),
            )
            db.execute("DELETE FROM responses WHERE expires_at <= ?", (now,))
            return self._evict(db)

    def _touch(self, keys: set[str]) -> None:
        _touch(self._conn, keys)

    def _evict(self, db: sqlite3.Connection) -> list[str]:
        """Removes least recently used entries until both bounds hold. The entry just put is the
        most recently used and fits `max_bytes` alone, so it is never the one removed."""
        usage = _usage(db)
        entries, size = usage.entries, usage.value_bytes
        evicted: list[str] = []
        while entries > self._max_entries or size > self._max_bytes:
            batch = max(entries - self._max_entries, 16)
            victims = db.execute(
                "SELECT key, length(value) FROM responses ORDER BY used LIMIT ?", (batch,)
            ).fetchall()
            chosen = []
            for key, length in victims:
                if entries <= self._max_entries and size <= self._max_bytes:
                    break
                chosen.append((key,))
                entries, size = entries - 1, size - length
            db.executemany("DELETE FROM responses WHERE key = ?", chosen)
            evicted += (key for (key,) in chosen)
        return evicted

    def _delete(self, key: str) -> None:
        self._conn.execute("DELETE FROM responses WHERE key = ?", (key,))

    def _usage(self) -> StoreUsage:
        return _usage(self._conn)


# The LRU clock is the file's, not a process's: with several workers on one file, each use is
# later than every use before it, whichever worker made it (an indexed max: O(log n)).
_NEXT_USE = "(SELECT coalesce(max(used), 0) + 1 FROM responses)"


def _touch(db: sqlite3.Connection, keys: set[str]) -> None:
    db.executemany(f"UPDATE responses SET used = {_NEXT_USE} WHERE key = ?", [(k,) for k in keys])


def _usage(db: sqlite3.Connection) -> StoreUsage:
    entries, size = db.execute("SELECT entries, bytes FROM totals").fetchone()
    return StoreUsage(entries, size)


def _connect(path: Path) -> sqlite3.Connection:
    # isolation_level=None: autocommit, with explicit transactions where several statements
    # must apply together.
    db = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")  # WAL: durable across process crashes
        if db.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
            db.executescript(f"BEGIN IMMEDIATE; {_SCHEMA} COMMIT;")
        db.execute("SELECT count(*) FROM totals").fetchone()
    except BaseException:
        db.close()
        raise
    return db


class _transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
