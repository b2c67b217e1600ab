"""The local usage ledger: SQLite (WAL) under CACHE_DIR, so a restart forgets nothing; workers of
one replica (WORKERS > 1) share the file. All SQLite work runs on one thread of its own."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path

from adapters.process.worker import WorkerThread
from application.ports import Counts, UsageLedger

FILE_NAME = "usage.sqlite3"
BUSY_TIMEOUT = 1.0  # seconds to wait for another worker holding the write lock

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


class SqliteLedger(UsageLedger):
    """`directory` None: in memory (CACHE_DIR not writable), kept until the process ends."""

    def __init__(self, directory: Path | None) -> None:
        self._thread = WorkerThread("usage-ledger", "the usage ledger is closed")
        self._db = self._thread.call(self._open, directory)

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
        db.executescript(_SCHEMA)
        return db

    async def add(self, tenant: str, period: str, counts: Counts, expires_at: float) -> None:
        await self._thread.run(self._add, tenant, period, dict(counts), expires_at)

    def _add(
        self, tenant: str, period: str, counts: Mapping[tuple[str, str], int], expires_at: float
    ) -> None:
        rows = [(tenant, period, m, k, n, expires_at) for (m, k), n in counts.items()]
        with self._db:  # one transaction
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "INSERT INTO usage VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET "
                "count = count + excluded.count, expires_at = excluded.expires_at",
                rows,
            )
            self._db.execute("DELETE FROM usage WHERE expires_at < ?", (time.time(),))

    async def read(self, tenant: str, period: str) -> dict[tuple[str, str], int]:
        return await self._thread.run(self._read, tenant, period)

    def _read(self, tenant: str, period: str) -> dict[tuple[str, str], int]:
        rows = self._db.execute(
            "SELECT model, kind, count FROM usage WHERE tenant = ? AND period = ?",
            (tenant, period),
        )
        return {(model, kind): count for model, kind, count in rows}

    async def close(self) -> None:
        await self._thread.close(self._db.close)
