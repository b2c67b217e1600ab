"""The VectorIndex contract, against Qdrant Edge on disk (EdgeIndex), qdrant-client's local mode
(QdrantIndex) and a real Qdrant server (QdrantIndex; at $QDRANT_URL, or in Docker from a local
`qdrant/qdrant` image, else skipped with the reason)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path

import pytest
from qdrant_client import AsyncQdrantClient

from adapters.outbound.vector import IncompatibleIndex, edge
from adapters.outbound.vector.edge import DiskFull, EdgeIndex, IndexLost
from adapters.outbound.vector.qdrant import QdrantIndex
from adapters.outbound.vector.shared import IndexServer, IndexUnavailable, SharedIndex
from application.ports import VectorIndex, VectorMatch, VectorPoint

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:Payload indexes have no effect:UserWarning"),
]

DIM = 8
NOW = 1_800_000_000.0
LATER = NOW + 3600
QDRANT_IMAGE = "qdrant/qdrant"
NO_SERVER = "no Qdrant server: set QDRANT_URL or load the qdrant/qdrant image"


def point(
    name: str,
    vector: Sequence[float],
    scope: str = "scope-a",
    expires_at: float = LATER,
    text: str | None = None,
) -> VectorPoint:
    point_id = str(uuid.uuid5(uuid.NAMESPACE_URL, name))
    return VectorPoint(point_id, vector, scope, f"key-{name}", text or f"prompt {name}", expires_at)


def axis(i: int, scale: float = 1.0) -> list[float]:
    return [scale if j == i else 0.0 for j in range(DIM)]


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def ids(matches: list[VectorMatch]) -> list[str]:
    return [m.point_id for m in matches]


class Storage:
    """Where one backend keeps its points. `open()` gives a new adapter over the same storage:
    after closing the previous one, that is a restart."""

    def __init__(self, factory: Callable[[], VectorIndex], name: str) -> None:
        self._factory = factory
        self.name = name  # what an IncompatibleIndex message must mention
        self._opened: list[VectorIndex] = []

    def open(self) -> VectorIndex:
        index = self._factory()
        self._opened.append(index)
        return index

    async def close_all(self) -> None:
        for index in self._opened:
            await index.close()


@pytest.fixture(params=["edge", "shared-edge", "qdrant-local", "qdrant-server"])
async def storage(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Storage]:
    collection = f"test_{uuid.uuid4().hex[:12]}"
    server: IndexServer | None = None
    if request.param == "edge":
        directory = tmp_path / "edge"
        s = Storage(lambda: EdgeIndex(directory), str(directory))
    elif request.param == "shared-edge":  # the workers' index: one process serves the shard
        directory, socket = tmp_path / "edge", str(tmp_path / "vectors.sock")
        served = EdgeIndex(directory)
        server = IndexServer(served, socket)
        await server.start()
        s = Storage(lambda: SharedIndex(socket), str(directory))
    elif request.param == "qdrant-local":
        path = str(tmp_path / "qdrant")
        s = Storage(lambda: QdrantIndex(AsyncQdrantClient(path=path), collection), collection)
    else:
        url: str = request.getfixturevalue("qdrant_url")
        s = Storage(lambda: QdrantIndex(AsyncQdrantClient(url=url), collection), collection)
    try:
        yield s
    finally:
        await s.close_all()
        if server is not None:
            await server.stop()
            await served.close()
        if request.param == "qdrant-server":
            cleanup = AsyncQdrantClient(url=url)
            await cleanup.delete_collection(collection)
            await cleanup.close()


@pytest.fixture
async def index(storage: Storage) -> VectorIndex:
    index = storage.open()
    await index.ensure_ready(DIM)
    return index


@pytest.fixture(scope="session")
def qdrant_url() -> Iterator[str]:
    if url := os.environ.get("QDRANT_URL"):
        yield url
        return
    if not _docker_has(QDRANT_IMAGE):
        pytest.skip(NO_SERVER)
    # As in tests/containers.py: no Ryuk (it would be pulled), the fixture removes its container.
    os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
    from testcontainers.community.qdrant import QdrantContainer

    container = QdrantContainer(image=QDRANT_IMAGE, labels={"llm-proxy.tests": "true"})
    try:
        container.start()
    except Exception as error:  # the daemon answers but cannot run containers
        with contextlib.suppress(Exception):
            container.stop()
        pytest.skip(f"{NO_SERVER} (Docker could not start {QDRANT_IMAGE}: {error})")
    try:
        yield f"http://{container.rest_host_address}"
    finally:
        container.stop()


def _docker_has(image: str) -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        found = subprocess.run(
            ["docker", "image", "inspect", image], capture_output=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return found.returncode == 0


async def test_nearest_first_with_cosine_similarity(index: VectorIndex) -> None:
    query = [1.0, 1.0, 0, 0, 0, 0, 0, 0]
    same_direction = point("same", [3.0, 3.0, 0, 0, 0, 0, 0, 0])  # longer, still cosine 1
    close = point("close", [1.0, 0.2, 0.1, 0, 0, 0, 0, 0])
    orthogonal = point("orthogonal", axis(2, scale=5.0))
    opposite = point("opposite", [-1.0, -2.0, 0, 0, 0, 0, 0, 0])
    for p in (orthogonal, opposite, close, same_direction):
        await index.upsert(p)

    matches = await index.search(query, "scope-a", NOW, 10)

    expected = [same_direction, close, orthogonal, opposite]
    assert ids(matches) == [p.point_id for p in expected]
    for match, p in zip(matches, expected, strict=True):
        assert match.similarity == pytest.approx(cosine(query, p.vector), abs=1e-5)
        assert (match.entry_key, match.text, match.expires_at) == (p.entry_key, p.text, LATER)


async def test_limit_keeps_the_best(index: VectorIndex) -> None:
    for i in range(5):
        await index.upsert(point(f"p{i}", [1.0, i / 4, 0, 0, 0, 0, 0, 0]))

    matches = await index.search(axis(0), "scope-a", NOW, 2)

    assert ids(matches) == [point("p0", []).point_id, point("p1", []).point_id]
    assert await index.search(axis(0), "scope-a", NOW, 0) == []


async def test_a_point_of_another_scope_is_never_returned(index: VectorIndex) -> None:
    query = axis(0)
    for i in range(5):  # identical to the query: a post-filter on the top 1 would find nothing
        await index.upsert(point(f"theirs{i}", query, scope="scope-b"))
    mine = point("mine", [1.0, 1.0, 1.0, 0, 0, 0, 0, 0], scope="scope-a")
    await index.upsert(mine)

    assert ids(await index.search(query, "scope-a", NOW, 1)) == [mine.point_id]
    assert mine.point_id not in ids(await index.search(query, "scope-b", NOW, 10))
    assert await index.search(query, "scope-c", NOW, 10) == []


async def test_expired_points_are_filtered_at_query_time(index: VectorIndex) -> None:
    query = axis(0)
    expired = point("expired", query, expires_at=NOW - 1)
    at_expiry = point("at-expiry", query, expires_at=NOW)  # expires_at <= now is expired
    live = point("live", [1.0, 1.0, 0, 0, 0, 0, 0, 0], expires_at=NOW + 1)
    for p in (expired, at_expiry, live):
        await index.upsert(p)

    assert ids(await index.search(query, "scope-a", NOW, 1)) == [live.point_id]
    # Nothing was deleted: earlier, all three are live.
    earlier = await index.search(query, "scope-a", NOW - 10, 10)
    assert set(ids(earlier)) == {expired.point_id, at_expiry.point_id, live.point_id}


async def test_delete_expired_removes_only_expired_points_and_counts_them(
    index: VectorIndex,
) -> None:
    expired = [
        point("old", axis(0), scope="scope-a", expires_at=NOW - 100),
        point("just-expired", axis(1), scope="scope-b", expires_at=NOW - 0.5),
        point("at-expiry", axis(2), scope="scope-a", expires_at=NOW),
    ]
    live = [
        point("live-a", axis(3), scope="scope-a", expires_at=NOW + 0.5),
        point("live-b", axis(4), scope="scope-b", expires_at=LATER),
    ]
    for p in expired + live:
        await index.upsert(p)

    assert await index.delete_expired(NOW) == 3
    assert await index.delete_expired(NOW) == 0

    remaining = [
        *await index.search(axis(0), "scope-a", 0.0, 10),
        *await index.search(axis(0), "scope-b", 0.0, 10),
    ]
    assert sorted(ids(remaining)) == sorted(p.point_id for p in live)


async def test_upserting_the_same_id_overwrites(index: VectorIndex) -> None:
    await index.upsert(point("entry", axis(0), text="old prompt", expires_at=NOW + 10))
    newer = point("entry", axis(1), text="new prompt", expires_at=LATER)
    await index.upsert(newer)
    await index.upsert(newer)

    by_new_vector = await index.search(axis(1), "scope-a", NOW, 10)
    by_old_vector = await index.search(axis(0), "scope-a", NOW, 10)

    assert [(m.point_id, m.text, m.expires_at) for m in by_new_vector] == [
        (newer.point_id, "new prompt", LATER)
    ]
    assert by_new_vector[0].similarity == pytest.approx(1.0, abs=1e-5)
    assert ids(by_old_vector) == [newer.point_id]  # the same point, not a stale copy
    assert by_old_vector[0].similarity == pytest.approx(0.0, abs=1e-5)


async def test_delete_removes_the_given_points(index: VectorIndex) -> None:
    gone, kept = point("gone", axis(0)), point("kept", axis(1))
    await index.upsert(gone)
    await index.upsert(kept)

    await index.delete([gone.point_id, point("never-stored", axis(2)).point_id])
    await index.delete([])

    assert ids(await index.search(axis(0), "scope-a", NOW, 10)) == [kept.point_id]


async def test_concurrent_upserts_all_land(index: VectorIndex) -> None:
    points = [point(f"p{i}", [1.0, i / 20, 0, 0, 0, 0, 0, 0]) for i in range(20)]

    await asyncio.gather(*(index.upsert(p) for p in points))

    assert sorted(ids(await index.search(axis(0), "scope-a", NOW, 50))) == sorted(
        p.point_id for p in points
    )


async def test_ensure_ready_again_keeps_the_points(index: VectorIndex) -> None:
    stored = point("stored", axis(0))
    await index.upsert(stored)

    await index.ensure_ready(DIM)

    assert ids(await index.search(axis(0), "scope-a", NOW, 10)) == [stored.point_id]


async def test_points_survive_closing_and_reopening(storage: Storage, index: VectorIndex) -> None:
    stored = point("stored", axis(0), text="what is the capital of France?")
    await index.upsert(stored)
    await index.close()

    reopened = storage.open()
    await reopened.ensure_ready(DIM)

    [match] = await reopened.search(axis(0), "scope-a", NOW, 10)
    assert (match.point_id, match.entry_key, match.text, match.expires_at) == (
        stored.point_id,
        stored.entry_key,
        stored.text,
        LATER,
    )


async def test_another_dimension_is_refused_with_what_to_do(
    storage: Storage, index: VectorIndex
) -> None:
    with pytest.raises(IncompatibleIndex) as same_instance:
        await index.ensure_ready(DIM * 2)
    await index.close()
    with pytest.raises(IncompatibleIndex) as after_restart:
        await storage.open().ensure_ready(DIM * 2)

    for error in (same_instance.value, after_restart.value):
        message = str(error)
        assert storage.name in message
        assert f"size {DIM}," in message
        assert f"size {DIM * 2}:" in message
        assert "delete" in message


async def test_edge_index_must_be_opened_and_not_closed(tmp_path: Path) -> None:
    index = EdgeIndex(tmp_path / "edge")
    with pytest.raises(RuntimeError, match="ensure_ready"):
        await index.search(axis(0), "scope-a", NOW, 1)
    await index.ensure_ready(DIM)
    await index.close()
    await index.close()
    with pytest.raises(RuntimeError, match="closed"):
        await index.upsert(point("late", axis(0)))


async def test_edge_sweep_vacuums_and_a_restart_keeps_the_live_points(tmp_path: Path) -> None:
    # The engine vacuums a segment only past 1000 points with 20% of them deleted.
    index = EdgeIndex(tmp_path / "edge")
    await index.ensure_ready(DIM)
    points = [
        point(f"p{i}", [1.0, i / 1200, 0, 0, 0, 0, 0, 0], expires_at=NOW - 1 if i % 2 else LATER)
        for i in range(1200)
    ]
    await asyncio.gather(*(index.upsert(p) for p in points))

    assert await index.delete_expired(NOW) == 600
    await index.close()  # right away: the queued vacuum and flush run before the shard closes

    reopened = EdgeIndex(tmp_path / "edge")
    await reopened.ensure_ready(DIM)
    try:
        found = await reopened.search(axis(0), "scope-a", 0.0, 1000)
        assert sorted(ids(found)) == sorted(p.point_id for p in points if p.expires_at == LATER)
    finally:
        await reopened.close()


async def test_edge_shard_that_cannot_be_loaded_is_moved_aside_and_recreated(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    index = EdgeIndex(tmp_path / "vectors")
    await index.ensure_ready(DIM)
    await index.upsert(point("a", axis(0)))
    await index.close()
    (tmp_path / "vectors" / "edge_config.json").write_text("not json{")

    index = EdgeIndex(tmp_path / "vectors")
    await index.ensure_ready(DIM)
    try:
        assert await index.search(axis(0), "scope-a", NOW, 5) == []  # a fresh, empty shard
        await index.upsert(point("b", axis(1)))
        assert len(await index.search(axis(1), "scope-a", NOW, 5)) == 1
    finally:
        await index.close()
    names = os.listdir(tmp_path)
    assert len([n for n in names if n.startswith("vectors.corrupt-")]) == 1, names
    assert "moved to" in caplog.text


async def test_edge_shard_open_elsewhere_is_not_moved_aside(tmp_path: Path) -> None:
    first = EdgeIndex(tmp_path / "vectors")
    await first.ensure_ready(DIM)
    second = EdgeIndex(tmp_path / "vectors")
    try:
        with pytest.raises(RuntimeError, match="open in another process"):
            await second.ensure_ready(DIM)
        assert os.listdir(tmp_path) == ["vectors"]
    finally:
        await second.close()
        await first.close()


async def test_edge_directory_deleted_while_open_is_noticed_then_recreated(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    index = EdgeIndex(tmp_path / "cache" / "vectors")
    await index.ensure_ready(DIM)
    await index.upsert(point("a", axis(0)))
    shutil.rmtree(tmp_path / "cache")
    try:
        with pytest.raises(IndexLost):
            await index.upsert(point("b", axis(1)))
        assert "deleted while open" in caplog.text
        await index.ensure_ready(DIM)
        await index.upsert(point("c", axis(2)))
        assert (tmp_path / "cache" / "vectors" / "edge_config.json").exists()
        assert ids(await index.search(axis(2), "scope-a", NOW, 5)) == [point("c", axis(2)).point_id]
    finally:
        await index.close()


async def test_edge_refuses_every_call_while_the_disk_lacks_room(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    index = EdgeIndex(tmp_path / "vectors")
    free = shutil.disk_usage(tmp_path).free
    monkeypatch.setattr(edge, "MARGIN", free + 1)  # as if the disk had no room
    with pytest.raises(DiskFull, match="MiB free"):
        await index.ensure_ready(DIM)
    assert not (tmp_path / "vectors").exists()  # nothing created on a full disk
    monkeypatch.setattr(edge, "MARGIN", 0)
    await index.ensure_ready(DIM)
    await index.upsert(point("a", axis(0)))
    monkeypatch.setattr(edge, "MARGIN", free + 1)
    try:
        for call in (
            index.upsert(point("b", axis(1))),
            index.search(axis(0), "scope-a", NOW, 5),
            index.ensure_ready(DIM),
        ):
            with pytest.raises(DiskFull):
                await call
        monkeypatch.setattr(edge, "MARGIN", 0)  # room again: back without a restart
        assert len(await index.search(axis(0), "scope-a", NOW, 5)) == 1
    finally:
        await index.close()


class SlowFirstSearch(VectorIndex):
    """Answers each search with the scope it was asked for; the first one takes 0.3 s."""

    def __init__(self) -> None:
        self.searches = 0

    async def ensure_ready(self, dimension: int) -> None:
        return None

    async def search(
        self, vector: Sequence[float], scope: str, now: float, limit: int
    ) -> list[VectorMatch]:
        self.searches += 1
        if self.searches == 1:
            await asyncio.sleep(0.3)
        return [VectorMatch(scope, 1.0, scope, scope, now)]  # the scope in every field

    async def upsert(self, point: VectorPoint) -> None:
        return None

    async def delete(self, point_ids: Sequence[str]) -> None:
        return None

    async def delete_expired(self, now: float) -> int:
        return 0

    async def close(self) -> None:
        return None


async def test_shared_index_drops_the_late_reply_of_a_call_that_timed_out(tmp_path: Path) -> None:
    server = IndexServer(SlowFirstSearch(), str(tmp_path / "s.sock"))
    await server.start()
    client = SharedIndex(str(tmp_path / "s.sock"))
    try:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await client.search(axis(0), "first", NOW, 1)
        found = await client.search(axis(0), "second", NOW, 1)
        assert [m.entry_key for m in found] == ["second"]
    finally:
        await client.close()
        await server.stop()


async def test_shared_index_unreachable_fails_fast_and_reconnects(tmp_path: Path) -> None:
    socket = str(tmp_path / "s.sock")
    client = SharedIndex(socket)
    with pytest.raises(IndexUnavailable, match="cannot reach"):
        await client.delete_expired(NOW)
    directory = tmp_path / "edge"
    for _ in range(2):  # a server, then another one after it went away: a restart
        served = EdgeIndex(directory)
        server = IndexServer(served, socket)
        await server.start()
        try:
            for _ in range(3):
                with contextlib.suppress(IndexUnavailable):  # the connection the last one broke
                    await client.ensure_ready(DIM)
            await client.upsert(point("a", axis(0)))
            assert len(await client.search(axis(0), "scope-a", NOW, 5)) == 1
        finally:
            await server.stop()
            await served.close()
    await client.close()


async def test_edge_upkeep_keeps_max_points_deleting_those_expiring_first(tmp_path: Path) -> None:
    index = EdgeIndex(tmp_path / "vectors", max_points=3)
    await index.ensure_ready(DIM)
    try:
        for i in range(5):  # p0 expires first
            await index.upsert(point(f"p{i}", axis(i), expires_at=LATER + i))
        assert len(await index.search(axis(0), "scope-a", NOW, 10)) == 5  # until the upkeep
        assert await index.delete_expired(NOW) == 0  # the sweep queues the upkeep
        found = await index.search(axis(0), "scope-a", NOW, 10)
        assert sorted(ids(found)) == sorted(point(f"p{i}", axis(i)).point_id for i in (2, 3, 4))
    finally:
        await index.close()
