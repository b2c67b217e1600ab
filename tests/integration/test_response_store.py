"""The ResponseStore contract, against SQLite on disk (EmbeddedStore) and a real Redis in Docker
(RedisStore; skipped, with the reason, where Docker is not usable)."""

from __future__ import annotations

import asyncio
import json
import socket
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis.exceptions

from adapters.outbound.store.embedded import FRONT_MAX_CHARS, EmbeddedStore, StoreLost
from adapters.outbound.store.redis import DEFAULT_NAMESPACE, RedisStore, parse_addr, redis_client
from application.ports import ResponseStore
from domain.model import Completion, FinishReason, Usage
from tests.containers import RedisServer, disposable_redis, redis_server  # noqa: F401

pytestmark = pytest.mark.integration

TIMEOUT = 0.3  # the Redis client's connect and read timeout in these tests
FAIL_FAST = 1.0  # an unavailable Redis must fail a call within this


def completion(content: str = "Paris.", reason: FinishReason = FinishReason.STOP) -> Completion:
    return Completion(content, "gpt-4o-mini-2024-07-18", "openai", reason, Usage(12, 3))


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Backend:
    """A store under test and what the contract needs to reach around it."""

    store: ResponseStore
    write_raw: Callable[[str, bytes], Awaitable[None]]  # puts bytes under a key, bypassing codec
    let_expire: Callable[[], Awaitable[None]]  # makes an entry put with `short_ttl` expire
    short_ttl: float


def embedded_backend(directory: Path) -> Backend:
    clock = FakeClock()
    store = EmbeddedStore(directory, clock=clock)

    async def write_raw(key: str, value: bytes) -> None:
        # straight into the file, as another process would write it (this store's in-process
        # front holds only what it put or read itself)
        await store.put("other", completion(), 60)  # the schema is ready
        with sqlite3.connect(store.path) as db:
            db.execute(
                "INSERT INTO responses (key, value, expires_at, used) VALUES (?, ?, ?, 0)",
                (key, value, clock.now + 60),
            )
        db.close()

    async def let_expire() -> None:
        clock.now += 2

    return Backend(store, write_raw, let_expire, short_ttl=1)


@pytest.fixture(params=["embedded", "redis"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "embedded":
        b = embedded_backend(tmp_path)
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        client = redis_client(server.addr, TIMEOUT)
        namespace = f"test:{request.node.name}:{time.monotonic_ns()}:"

        async def write_raw(key: str, value: bytes) -> None:
            await client.set(namespace + key, value, ex=60)

        async def let_expire() -> None:
            await asyncio.sleep(1.1)  # Redis expires on access with millisecond precision

        b = Backend(RedisStore(client, namespace), write_raw, let_expire, short_ttl=1)
    try:
        yield b
    finally:
        await b.store.close()


# The contract, for both stores.


async def test_missing_key_is_a_miss(backend: Backend) -> None:
    assert await backend.store.get("absent") is None


async def test_round_trip_keeps_every_field(backend: Backend) -> None:
    stored = {
        f"key-{reason.value}": Completion(
            content=f'Zürich 🚀\n\t"quoted" \\ {reason.value} ' + "x" * 10_000,
            model="gemini-2.0-flash-001",
            provider="gemini",
            finish_reason=reason,
            usage=Usage(input_tokens=123_456, output_tokens=0),
        )
        for reason in FinishReason
    }
    for key, value in stored.items():
        await backend.store.put(key, value, 60)
    for key, value in stored.items():
        assert await backend.store.get(key) == value


async def test_put_overwrites(backend: Backend) -> None:
    await backend.store.put("k", completion("first"), 60)
    await backend.store.put("k", completion("second"), 60)
    assert await backend.store.get("k") == completion("second")


async def test_entry_expires_after_its_ttl(backend: Backend) -> None:
    await backend.store.put("short", completion(), backend.short_ttl)
    await backend.store.put("long", completion("long"), 3600)
    assert await backend.store.get("short") == completion()
    await backend.let_expire()
    assert await backend.store.get("short") is None
    assert await backend.store.get("long") == completion("long")


async def test_non_positive_ttl_stores_nothing(backend: Backend) -> None:
    await backend.store.put("j", completion(), -5)
    await backend.store.put("k", completion(), 60)
    await backend.store.put("k", completion("expired at once"), 0)
    assert await backend.store.get("j") is None
    assert await backend.store.get("k") is None


async def test_delete(backend: Backend) -> None:
    await backend.store.put("gone", completion(), 60)
    await backend.store.put("kept", completion("kept"), 60)
    await backend.store.delete("gone")
    await backend.store.delete("never-stored")
    assert await backend.store.get("gone") is None
    assert await backend.store.get("kept") == completion("kept")


def _entry(**changes: object) -> bytes:
    entry: dict[str, object] = {
        "v": 1,
        "content": "hi",
        "model": "m",
        "provider": "openai",
        "finish_reason": "stop",
        "usage": {"input_tokens": 1, "output_tokens": 2},
    }
    entry.update(changes)
    return json.dumps({k: v for k, v in entry.items() if v is not None}).encode()


CORRUPT = {
    "not json": b"\x00\x01garbage",
    "invalid utf-8": b'{"v": 1, "content": "\xff\xfe"}',
    "truncated": _entry()[:-7],
    "json list": b"[1, 2, 3]",
    "deep nesting": b"[" * 100_000 + b"]" * 100_000,
    "unknown version": _entry(v=2),
    "no version": _entry(v=None),
    "missing field": _entry(model=None),
    "wrong type": _entry(content=42),
    "unknown finish reason": _entry(finish_reason="exploded"),
    "negative tokens": _entry(usage={"input_tokens": -1, "output_tokens": 2}),
    "boolean tokens": _entry(usage={"input_tokens": True, "output_tokens": 2}),
    "usage not an object": _entry(usage=[1, 2]),
}


async def test_a_corrupt_or_unknown_entry_is_a_miss(backend: Backend) -> None:
    await backend.write_raw("fine", _entry())  # well-formed: each case below has one flaw
    assert await backend.store.get("fine") == Completion(
        "hi", "m", "openai", FinishReason.STOP, Usage(1, 2)
    )
    for name, value in CORRUPT.items():
        await backend.write_raw(name, value)
        assert await backend.store.get(name) is None, name
    await backend.store.put("not json", completion(), 60)
    assert await backend.store.get("not json") == completion()


async def test_concurrent_use_from_many_tasks(backend: Backend) -> None:
    async def worker(n: int) -> None:
        for i in range(5):
            key = f"task-{n}-{i}"
            await backend.store.put(key, completion(key), 60)
            assert await backend.store.get(key) == completion(key)
            assert await backend.store.get(f"task-{(n + 1) % 50}-absent") is None
        await backend.store.delete(f"task-{n}-0")

    await asyncio.wait_for(asyncio.gather(*(worker(n) for n in range(50))), timeout=30)
    for n in range(50):
        assert await backend.store.get(f"task-{n}-0") is None
        assert await backend.store.get(f"task-{n}-4") == completion(f"task-{n}-4")


# EmbeddedStore only.


async def test_embedded_survives_reopening(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path / "cache")
    await store.put("k", completion(), 3600)
    await store.close()
    reopened = EmbeddedStore(tmp_path / "cache")
    try:
        assert await reopened.get("k") == completion()
    finally:
        await reopened.close()


async def test_embedded_evicts_the_least_recently_used_beyond_max_entries(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path, max_entries=3)
    for key in "abc":
        await store.put(key, completion(key), 60)
    assert await store.get("a") == completion("a")  # now b is the least recently used
    await store.put("d", completion("d"), 60)
    assert await store.get("b") is None
    for key in "acd":
        assert await store.get(key) == completion(key)
    assert (await store.usage()).entries == 3
    await store.close()


async def test_embedded_lru_order_survives_reopening(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path, max_entries=2)
    await store.put("a", completion("a"), 60)
    await store.put("b", completion("b"), 60)
    await store.get("a")
    await store.close()
    store = EmbeddedStore(tmp_path, max_entries=2)
    await store.put("c", completion("c"), 60)
    assert await store.get("b") is None
    assert await store.get("a") == completion("a")
    await store.close()


async def test_embedded_stays_within_max_bytes(tmp_path: Path) -> None:
    one = len(json.dumps({"content": "x" * 1000}))
    store = EmbeddedStore(tmp_path, max_bytes=5 * one)
    for i in range(20):
        await store.put(f"k{i}", completion(f"{i:02d}" + "x" * 998), 60)
        usage = await store.usage()
        assert usage.value_bytes <= 5 * one
    assert usage.entries < 20
    assert await store.get("k19") == completion("19" + "x" * 998)
    assert await store.get("k0") is None
    await store.close()


async def test_embedded_does_not_store_a_value_larger_than_max_bytes(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path, max_bytes=500)
    await store.put("small", completion(), 60)
    await store.put("huge", completion("x" * 1000), 60)
    assert await store.get("huge") is None
    assert await store.get("small") == completion()
    await store.close()


async def test_embedded_removes_expired_entries_first(tmp_path: Path) -> None:
    clock = FakeClock()
    store = EmbeddedStore(tmp_path, max_entries=3, clock=clock)
    await store.put("short", completion(), 10)
    await store.put("old", completion("old"), 1000)
    await store.get("short")  # recently used, but expired below: it goes before "old"
    clock.now += 11
    await store.put("new", completion("new"), 1000)
    assert (await store.usage()).entries == 2
    assert await store.get("old") == completion("old")
    assert await store.get("new") == completion("new")
    await store.close()


async def test_embedded_expired_entry_is_removed_when_read(tmp_path: Path) -> None:
    clock = FakeClock()
    store = EmbeddedStore(tmp_path, clock=clock)
    await store.put("k", completion(), 10)
    clock.now += 10
    assert await store.get("k") is None
    assert (await store.usage()).entries == 0
    await store.close()


async def test_embedded_replaces_an_unreadable_database_file(tmp_path: Path) -> None:
    (tmp_path / "responses.sqlite3").write_bytes(b"this is not a database" * 100)
    store = EmbeddedStore(tmp_path)
    await store.put("k", completion(), 60)
    assert await store.get("k") == completion()
    await store.close()
    assert len(files_moved_aside(tmp_path)) == 1


def files_moved_aside(directory: Path) -> list[Path]:
    return list(directory.glob("responses.sqlite3.corrupt-*"))


async def test_embedded_lru_is_one_order_across_stores_on_one_file(tmp_path: Path) -> None:
    # two workers on one file: a use by either is later than every use before it
    first = EmbeddedStore(tmp_path, max_entries=3)
    second = EmbeddedStore(tmp_path, max_entries=3)
    try:
        for key in "abc":
            await first.put(key, completion(key), 60)
        assert await second.get("a") == completion("a")  # b is now the least recently used
        await first.put("d", completion("d"), 60)
        assert await second.get("b") is None
        assert await first.get("a") == completion("a")
    finally:
        await first.close()
        await second.close()


async def test_embedded_reports_the_keys_it_evicts(tmp_path: Path) -> None:
    evicted: list[str] = []

    async def on_evict(keys: list[str]) -> None:
        evicted.extend(keys)

    store = EmbeddedStore(tmp_path, max_entries=2, on_evict=on_evict)
    for key in "abcd":
        await store.put(key, completion(key), 60)
    await store.close()  # waits for the evictions' callbacks, which run in the background
    assert evicted == ["a", "b"]


async def test_embedded_file_deleted_while_open_is_noticed_and_recreated(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = EmbeddedStore(tmp_path / "cache", max_entries=10)
    await store.put("k", completion(), 60)
    for path in (tmp_path / "cache").iterdir():
        path.unlink()
    (tmp_path / "cache").rmdir()
    with pytest.raises(StoreLost):
        await store.put("k2", completion("k2"), 60)  # never written to the unlinked file
    assert "deleted or replaced while open" in caplog.text
    await store.put("k3", completion("k3"), 60)
    await store.close()
    reopened = EmbeddedStore(tmp_path / "cache")
    try:
        assert await reopened.get("k3") == completion("k3")  # on disk, under the name
        assert await reopened.get("k") is None
    finally:
        await reopened.close()


async def test_embedded_that_cannot_open_fails_calls_and_opens_once_it_can(tmp_path: Path) -> None:
    blocked = tmp_path / "cache"
    blocked.write_text("a file where the directory should be")
    store = EmbeddedStore(blocked / "responses")
    with pytest.raises(NotADirectoryError):
        await store.put("k", completion(), 60)
    blocked.unlink()
    await store.put("k", completion(), 60)
    assert await store.get("k") == completion()
    await store.close()


async def test_embedded_close_is_idempotent_and_final(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path)
    await store.close()
    await store.close()
    with pytest.raises(RuntimeError, match="closed"):
        await store.get("k")


async def test_embedded_does_not_block_the_event_loop(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    await asyncio.gather(*(store.put(f"k{i}", completion(), 60) for i in range(200)))
    task.cancel()
    assert ticks > 50  # the loop kept running other tasks while SQLite worked
    await store.close()


async def test_embedded_repeated_reads_skip_the_worker_thread(tmp_path: Path) -> None:
    clock = FakeClock()
    store = EmbeddedStore(tmp_path, clock=clock)
    await store.put("stored", completion("a"), 10)
    with sqlite3.connect(store.path) as db:  # as another process would write it
        db.execute("INSERT INTO responses VALUES ('other', ?, ?, 0)", (codec_bytes("b"), 1e12))
    db.close()
    assert await store.get("other") == completion("b")  # read from SQLite once...
    hops = 0
    run = store._worker.run

    async def counted(*args: object) -> object:
        nonlocal hops
        hops += 1
        return await run(*args)  # type: ignore[arg-type]

    store._worker.run = counted  # type: ignore[method-assign]
    assert await store.get("stored") == completion("a")  # ...then served in-process
    assert await store.get("other") == completion("b")
    assert hops == 0
    clock.now += 10  # the front keeps the entry's expiry
    assert await store.get("stored") is None
    assert hops == 1
    long = completion("x" * (FRONT_MAX_CHARS + 1))  # long answers are not kept in memory
    await store.put("long", long, 60)
    assert await store.get("long") == long
    assert hops == 3
    await store.close()


def codec_bytes(content: str) -> bytes:
    from adapters.outbound.store import codec

    return codec.encode(completion(content))


def test_embedded_rejects_non_positive_bounds(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="positive"):
        EmbeddedStore(tmp_path, max_entries=0)


# RedisStore only.


async def test_redis_keys_are_namespaced_and_expire(redis_server: RedisServer) -> None:  # noqa: F811
    client = redis_client(redis_server.addr, TIMEOUT)
    store = RedisStore(client)
    try:
        await store.put("abc", completion(), 90)
        assert 89_000 < await client.pttl(DEFAULT_NAMESPACE + "abc") <= 90_000
        assert await RedisStore(client, "other:").get("abc") is None
    finally:
        await store.delete("abc")
        await store.close()


async def timed(call: Awaitable[object]) -> tuple[BaseException | None, float]:
    start = time.monotonic()
    try:
        await call
    except Exception as error:
        return error, time.monotonic() - start
    return None, time.monotonic() - start


async def test_redis_down_fails_fast_and_recovers(disposable_redis: RedisServer) -> None:  # noqa: F811
    store = RedisStore(redis_client(disposable_redis.addr, TIMEOUT))
    try:
        await store.put("k", completion(), 60)
        disposable_redis.stop()
        for call in (store.get("k"), store.put("k", completion(), 60), store.delete("k")):
            error, seconds = await timed(call)
            assert isinstance(error, redis.exceptions.ConnectionError), error
            assert seconds < FAIL_FAST
        disposable_redis.start()  # the same host port, an empty Redis (no persistence)
        assert await store.get("k") is None
        await store.put("k", completion("back"), 60)
        assert await store.get("k") == completion("back")
    finally:
        await store.close()


async def test_redis_hung_fails_within_the_timeout_and_recovers(
    disposable_redis: RedisServer,  # noqa: F811
) -> None:
    store = RedisStore(redis_client(disposable_redis.addr, TIMEOUT))
    try:
        await store.put("k", completion(), 60)
        disposable_redis.pause()
        for call in (store.get("k"), store.put("k", completion(), 60)):
            error, seconds = await timed(call)
            assert isinstance(error, redis.exceptions.TimeoutError), error
            assert seconds < FAIL_FAST
        disposable_redis.unpause()
        assert await store.get("k") == completion()
    finally:
        await store.close()


async def test_redis_unreachable_address_fails_fast() -> None:
    with socket_closed_port() as port:
        store = RedisStore(redis_client(f"127.0.0.1:{port}", TIMEOUT))
        error, seconds = await timed(store.get("k"))
        await store.close()
    assert isinstance(error, redis.exceptions.ConnectionError), error
    assert seconds < FAIL_FAST


@pytest.mark.parametrize(
    ("addr", "expected"),
    [
        ("localhost:6379", ("localhost", 6379)),
        ("redis.default.svc:6380", ("redis.default.svc", 6380)),
        (" 10.0.0.7:7000 ", ("10.0.0.7", 7000)),
        ("localhost", ("localhost", 6379)),
        ("[::1]:6380", ("::1", 6380)),
        ("[::1]", ("::1", 6379)),
    ],
)
def test_redis_addr_parsing(addr: str, expected: tuple[str, int]) -> None:
    assert parse_addr(addr) == expected


@pytest.mark.parametrize("addr", ["", ":6379", "host:port", "host:0", "host:70000", "::1", "[::1"])
def test_redis_addr_parsing_rejects(addr: str) -> None:
    with pytest.raises(ValueError, match="REDIS_ADDR"):
        parse_addr(addr)


async def test_redis_client_accepts_a_url() -> None:
    client = redis_client("redis://example.internal:6390/2", TIMEOUT)
    kwargs = client.connection_pool.connection_kwargs
    await client.aclose()
    assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("example.internal", 6390, 2)
    assert kwargs["socket_timeout"] == kwargs["socket_connect_timeout"] == TIMEOUT


@contextmanager
def socket_closed_port() -> Iterator[int]:
    """A loopback port nothing listens on, for the life of the block."""
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        port: int = bound.getsockname()[1]
        yield port
