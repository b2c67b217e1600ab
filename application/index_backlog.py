"""Stored answers that wait for their vector: a bounded queue, oldest first.

The cache's exact tier stores an answer at once; its semantic entry follows when the embedder has
time for it (application/semantic_cache.py indexes the backlog in batches). Only a full backlog
drops, the oldest first; every drop and the length are reported.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass

from application.ports import Metrics

MAX_FAILURES = 3  # tries of an entry whose embedding or upsert failed, before it is given up


@dataclass(slots=True)
class Unindexed:
    text: str  # what the embedder sees
    scope: str
    entry_key: str
    prompt: str
    expires_at: float  # wall-clock seconds, as its answer's
    failures: int = 0


class IndexBacklog:
    def __init__(self, limit: int, metrics: Metrics) -> None:
        if limit < 1:
            raise ValueError("an index backlog holds at least one entry")
        self._entries: deque[Unindexed] = deque()
        self._taken = 0  # entries being embedded and indexed now
        self._limit = limit
        self._metrics = metrics
        self._filled = asyncio.Event()

    def __len__(self) -> int:
        """Entries waiting (not those being indexed now)."""
        return len(self._entries)

    def add(self, entry: Unindexed) -> None:
        if len(self._entries) >= self._limit:
            self._entries.popleft()
            self._metrics.cache_index_dropped("full", 1)
        self._entries.append(entry)
        self._changed()

    def take(self, most: int) -> list[Unindexed]:
        """The `most` oldest entries, out of the queue; they count in the backlog's length
        until `settled` (indexed, put back or given up)."""
        taken = [self._entries.popleft() for _ in range(min(most, len(self._entries)))]
        self._taken += len(taken)
        return taken

    def settled(self, taken: list[Unindexed]) -> None:
        self._taken -= len(taken)
        self._changed()

    def put_back(self, entries: list[Unindexed]) -> None:
        """Entries taken and not indexed, back in front (they are the oldest): when newer ones
        filled the backlog meanwhile, the oldest of them go."""
        room = max(self._limit - len(self._entries), 0)
        if len(entries) > room:
            self._metrics.cache_index_dropped("full", len(entries) - room)
            entries = entries[len(entries) - room :]
        self._entries.extendleft(reversed(entries))
        self._changed()

    def failed(self, entries: list[Unindexed]) -> None:
        """Entries whose embedding or upsert failed: back in front, or given up after
        MAX_FAILURES tries."""
        for entry in entries:
            entry.failures += 1
        retry = [entry for entry in entries if entry.failures < MAX_FAILURES]
        if len(retry) < len(entries):
            self._metrics.cache_index_dropped("failed", len(entries) - len(retry))
        self.put_back(retry)

    def clear(self, reason: str) -> int:
        dropped = len(self._entries)
        self._entries.clear()
        if dropped:
            self._metrics.cache_index_dropped(reason, dropped)
        self._changed()
        return dropped

    async def filled(self) -> None:
        """Returns once the backlog holds an entry."""
        await self._filled.wait()

    def _changed(self) -> None:
        if self._entries:
            self._filled.set()
        else:
            self._filled.clear()
        self._metrics.cache_index_backlog(len(self._entries) + self._taken)
