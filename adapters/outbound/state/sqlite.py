"""The local usage ledger: SQLite (WAL) under CACHE_DIR, so a restart forgets nothing; workers of
one replica (WORKERS > 1) share the file. All SQLite work runs on one thread of its own.

Additions wait in memory (reads include them) and are written together every FLUSH_EVERY, and
at close: a request costs a dict update, not a transaction. A process killed without its
shutdown loses at most that last second of counts; `synchronous=NORMAL` (WAL) leaves the last
commits to the OS on a power cut."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import Counter
from pathlib import Path

from adapters.process.worker import WorkerThread
from application.ports import Counts, UsageLedger

FILE_NAME = "usage.sqlite3"
BUSY_TIMEOUT = 1.0  # seconds to wait for another worker holding the write lock
FLUSH_EVERY = 1.0  # seconds between two writes of what was added

_SCHEMA = """
CREATE TABLE IF NOT EXISTS usage (
    tenant TEXT NOT NULL,
    period TEXT NOT NULL,
    model TEXT NOT NULL,
    kind TEXT NOT NULL,
    count INTEGER NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (tenant, period, model, kind)
);
CREATE INDEX IF NOT EXISTS usage_expires_at ON usage (expires_at);
"""

Batch = dict[tuple[str, str], tuple[Counter[tuple[str, str]], float]]


class SqliteLedger(UsageLedger):
    """`directory` None: in memory (CACHE_DIR not writable), kept until the process ends."""

    def __init__(self, directory: Path | None) -> None:
        self._thread = WorkerThread("usage-ledger", "the usage ledger is closed")
        self._db = self._thread.call(self._open, directory)
        self._pending: Batch = {}
        self._writing = asyncio.Lock()
        self._flusher: asyncio.Task[None] | None = None

    @staticmethod
    def _open(directory: Path | None) -> sqlite3.Connection:
        if directory is None:
            db = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        else:
            directory.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(
                directory / FILE_NAME, timeout=BUSY_TIMEOUT, isolation_level=None,
                check_same_thread=False,
            )  # fmt: skip
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
        return db

    async def add(self, tenant: str, period: str, counts: Counts, expires_at: float) -> None:
        pending, _ = self._pending.get((tenant, period), (Counter(), expires_at))
        pending.update(counts)
        self._pending[(tenant, period)] = (pending, expires_at)
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_every())

    async def _flush_every(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_EVERY)
            await self._flush()

    async def _flush(self) -> None:
        async with self._writing:
            batch, self._pending = self._pending, {}
            if batch:
                await self._thread.run(self._write, batch)

    def _write(self, batch: Batch) -> None:
        rows = [
            (tenant, period, model, kind, n, expires_at)
            for (tenant, period), (counts, expires_at) in batch.items()
            for (model, kind), n in counts.items()
        ]
        with self._db:  # one transaction
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "INSERT INTO usage VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET "
                "count = count + excluded.count, expires_at = excluded.expires_at",
                rows,
            )
            self._db.execute("DELETE FROM usage WHERE expires_at < ?", (time.time(),))

    async def read(self, tenant: str, period: str) -> dict[tuple[str, str], int]:
        stored = await self._thread.run(self._read, tenant, period)
        total = Counter(stored)
        total.update(self._pending.get((tenant, period), (Counter(), 0.0))[0])
        return dict(total)

    def _read(self, tenant: str, period: str) -> dict[tuple[str, str], int]:
        rows = self._db.execute(
            "SELECT model, kind, count FROM usage WHERE tenant = ? AND period = ?",
            (tenant, period),
        )
        return {(model, kind): count for model, kind, count in rows}

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
        await self._flush()
        await self._thread.close(self._db.close)
