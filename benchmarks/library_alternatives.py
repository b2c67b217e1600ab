"""The hand-written parts a kept library also does, timed against that library on the same
input (issue 11; the decisions are in docs/decisions.md, "Libraries").

    .uv/bin/uv pip install --python .venv/bin/python httpx-sse python-json-logger diskcache
    .venv/bin/python benchmarks/library_alternatives.py [--repeat 5]

The libraries are not dependencies of the proxy: install them into the venv to run this (the
next `make setup` removes them again). Each figure is the best of `--repeat` runs.
- SSE: 2,000 OpenAI-style chunk events read 7 and 1,024 bytes at a time from an httpx response:
  our `aiter_events` vs httpx-sse's `EventSource.aiter_sse`.
- JSON logs: 20,000 records with two `extra` fields: our `JsonFormatter` vs python-json-logger's.
- Response store: 2,000 puts then 2,000 gets of a cached completion, each call on the store's
  worker thread: our `EmbeddedStore` (SQLite) vs `diskcache.Cache` (SQLite underneath, LRU
  eviction by byte size, expiry per key).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import diskcache  # type: ignore[import-untyped]
import httpx
import httpx_sse
from pythonjsonlogger.json import JsonFormatter as LibraryJsonFormatter

from adapters.outbound.observability.logs import JsonFormatter
from adapters.outbound.providers.sse import aiter_events
from adapters.outbound.store import codec
from adapters.outbound.store.embedded import EmbeddedStore
from adapters.process.worker import WorkerThread
from domain.model import Completion, FinishReason, Usage

EVENTS, RECORDS, ENTRIES = 2000, 20_000, 2000
PIECES = (7, 1024)  # bytes per read: a worst case, and a typical TCP read of a stream
COMPLETION = Completion("an answer " * 20, "gpt-4o", "openai", FinishReason.STOP, Usage(12, 40))


def sse_body() -> bytes:
    chunk = {"choices": [{"index": 0, "delta": {"content": "word "}, "finish_reason": None}]}
    return b"".join(b"data: " + json.dumps(chunk).encode() + b"\n\n" for _ in range(EVENTS))


def response(body: bytes, piece: int) -> httpx.Response:
    async def pieces() -> AsyncIterator[bytes]:
        for i in range(0, len(body), piece):
            yield body[i : i + piece]

    return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=pieces())


async def ours_sse(body: bytes, piece: int) -> int:
    chunks = response(body, piece).aiter_bytes()
    return len([e async for e in aiter_events(chunks, idle_timeout=30)])


async def library_sse(body: bytes, piece: int) -> int:
    source = httpx_sse.EventSource(response(body, piece))
    return len([e async for e in source.aiter_sse()])


def records() -> list[logging.LogRecord]:
    made = []
    for i in range(RECORDS):
        record = logging.LogRecord(
            "llm_proxy.requests", logging.INFO, __file__, 1, "request ok %s", (i,), None
        )
        record.model, record.outcome = "gpt-4o", "miss"
        made.append(record)
    return made


def format_all(formatter: logging.Formatter, batch: list[logging.LogRecord]) -> int:
    return sum(len(formatter.format(r)) for r in batch)


async def ours_store(directory: str) -> None:
    store = EmbeddedStore(directory, max_entries=ENTRIES * 2)
    for i in range(ENTRIES):
        await store.put(f"k{i}", COMPLETION, ttl=3600)
    for i in range(ENTRIES):
        assert await store.get(f"k{i}") is not None
    await store.close()


async def library_store(directory: str) -> None:
    worker = WorkerThread("diskcache", "closed")
    cache = await worker.run(
        lambda: diskcache.Cache(directory, eviction_policy="least-recently-used")
    )
    for i in range(ENTRIES):
        await worker.run(lambda i=i: cache.set(f"k{i}", codec.encode(COMPLETION), expire=3600))
    for i in range(ENTRIES):
        data = await worker.run(cache.get, f"k{i}")
        assert data is not None
        assert codec.decode(data) is not None
    await worker.close(cache.close)


def best(repeat: int, run: Callable[[], object]) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def in_fresh_dir(make: Callable[[str], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    def run() -> None:
        with tempfile.TemporaryDirectory() as directory:
            asyncio.run(make(directory))

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    repeat = parser.parse_args().repeat
    body = sse_body()
    batch = records()
    rows = []
    for piece in PIECES:
        assert asyncio.run(ours_sse(body, piece)) == asyncio.run(library_sse(body, piece)) == EVENTS
        ours = best(repeat, lambda p=piece: asyncio.run(ours_sse(body, p)))
        library = best(repeat, lambda p=piece: asyncio.run(library_sse(body, p)))
        rows += [
            (f"SSE {piece} B reads, ours", EVENTS, ours),
            (f"SSE {piece} B reads, httpx-sse", EVENTS, library),
        ]
    rows += [
        ("JSON log, ours", RECORDS, best(repeat, lambda: format_all(JsonFormatter(), batch))),
        (
            "JSON log, python-json-logger",
            RECORDS,
            best(repeat, lambda: format_all(LibraryJsonFormatter(), batch)),
        ),
        ("store put+get, ours (SQLite)", 2 * ENTRIES, best(repeat, in_fresh_dir(ours_store))),
        ("store put+get, diskcache", 2 * ENTRIES, best(repeat, in_fresh_dir(library_store))),
    ]
    for name, count, seconds in rows:
        print(f"{name:<32} {seconds * 1000:8.1f} ms  {seconds / count * 1e6:7.1f} us per item")


if __name__ == "__main__":
    main()
