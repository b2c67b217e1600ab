"""The micro-batcher in front of the local embedder, with a recording encoder on a real worker
thread (adapters/outbound/embedders/batching.py)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator

import pytest

from adapters.outbound.embedders.batching import MicroBatcher
from adapters.process.worker import WorkerThread


class Encoder:
    """Records each pass; a pass blocks until `gate` is set (a slow model)."""

    def __init__(self) -> None:
        self.passes: list[list[str]] = []
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, texts: list[str]) -> list[list[float]]:
        self.passes.append(list(texts))
        self.gate.wait(5)
        return [[float(len(text))] for text in texts]


@pytest.fixture
async def worker() -> AsyncIterator[WorkerThread]:
    thread = WorkerThread("test-batcher", "closed")
    yield thread
    thread.stop()


async def until(condition: object, seconds: float = 2.0) -> None:
    for _ in range(int(seconds / 0.005)):
        if callable(condition) and condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition never became true")


async def test_texts_that_queue_while_a_pass_runs_share_the_next_pass(
    worker: WorkerThread,
) -> None:
    encode = Encoder()
    batcher = MicroBatcher(encode, worker)
    encode.gate.clear()
    first = asyncio.ensure_future(batcher.embed(["a"]))
    await until(lambda: encode.passes)
    rest = [asyncio.ensure_future(batcher.embed([t])) for t in ("bb", "ccc", "dddd")]
    await asyncio.sleep(0.01)
    encode.gate.set()
    assert await first == [[1.0]]
    assert [await r for r in rest] == [[[2.0]], [[3.0]], [[4.0]]]
    assert encode.passes == [["a"], ["bb", "ccc", "dddd"]]


async def test_calls_in_the_same_loop_turn_share_one_pass(worker: WorkerThread) -> None:
    encode = Encoder()
    batcher = MicroBatcher(encode, worker)
    results = await asyncio.gather(*(batcher.embed([t]) for t in ("x", "yy", "zzz")))
    assert results == [[[1.0]], [[2.0]], [[3.0]]]
    assert encode.passes == [["x", "yy", "zzz"]]


async def test_lookups_go_before_background_texts_queued_earlier(worker: WorkerThread) -> None:
    encode = Encoder()
    batcher = MicroBatcher(encode, worker)
    encode.gate.clear()
    first = asyncio.ensure_future(batcher.embed(["busy"]))
    await until(lambda: encode.passes)
    stored = asyncio.ensure_future(batcher.embed(["stored"], background=True))
    await asyncio.sleep(0)
    looked_up = asyncio.ensure_future(batcher.embed(["looked up"]))
    await asyncio.sleep(0.01)
    encode.gate.set()
    await asyncio.gather(first, stored, looked_up)
    assert encode.passes == [["busy"], ["looked up"], ["stored"]]


async def test_background_texts_run_in_passes_sized_to_the_background_pass(
    worker: WorkerThread,
) -> None:
    passes: list[int] = []

    def encode(texts: list[str]) -> list[list[float]]:
        passes.append(len(texts))
        time.sleep(0.01 + 0.01 * len(texts))
        return [[1.0] for _ in texts]

    batcher = MicroBatcher(encode, worker, background_pass=0.05)
    batcher.per_pass, batcher.per_text = 0.01, 0.01  # a pass of 4 texts takes 0.05 s
    assert len(await batcher.embed([f"s{i}" for i in range(10)], background=True)) == 10
    assert passes[0] == 4
    assert max(passes) <= 4  # a slower machine learns a higher cost: smaller passes


async def test_a_text_whose_lookup_was_cancelled_is_not_embedded(worker: WorkerThread) -> None:
    encode = Encoder()
    batcher = MicroBatcher(encode, worker)
    encode.gate.clear()
    first = asyncio.ensure_future(batcher.embed(["busy"]))
    await until(lambda: encode.passes)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.02):
            await batcher.embed(["gave up"])
    encode.gate.set()
    await first
    assert await batcher.embed(["after"]) == [[5.0]]
    assert encode.passes == [["busy"], ["after"]]


async def test_the_expected_wait_grows_with_the_queue(worker: WorkerThread) -> None:
    encode = Encoder()
    batcher = MicroBatcher(encode, worker)
    idle = batcher.expected_wait()
    encode.gate.clear()
    calls = [asyncio.ensure_future(batcher.embed([f"t{i}"])) for i in range(10)]
    await until(lambda: encode.passes)
    more = [asyncio.ensure_future(batcher.embed([f"u{i}"])) for i in range(10)]
    await asyncio.sleep(0)
    assert idle == batcher.per_pass + batcher.per_text  # its own pass
    assert batcher.expected_wait() > 10 * batcher.per_text
    encode.gate.set()
    await asyncio.gather(*calls, *more)


async def test_an_encoder_failure_fails_the_calls_of_its_pass_only(worker: WorkerThread) -> None:
    failing = True

    def encode(texts: list[str]) -> list[list[float]]:
        if failing:
            raise ValueError("model broke")
        return [[1.0] for _ in texts]

    batcher = MicroBatcher(encode, worker)
    with pytest.raises(ValueError, match="model broke"):
        await batcher.embed(["a"])
    failing = False
    assert await batcher.embed(["b"]) == [[1.0]]


async def test_past_its_cpu_share_it_pauses_and_says_so_in_the_expected_wait(
    worker: WorkerThread,
) -> None:
    def slow(texts: list[str]) -> list[list[float]]:
        deadline = time.thread_time() + 0.05  # CPU, as the share counts it
        while time.thread_time() < deadline:
            pass
        return [[1.0] for _ in texts]

    batcher = MicroBatcher(slow, worker, max_busy=0.02)
    await batcher.embed(["a"])
    assert batcher.utilisation() > 0.02
    # 0.05 s of CPU over a 2% share: about a second's rest (BUSY_WINDOW * ln(0.05 / 0.02))
    assert 0.5 < batcher.expected_wait() < 2.0
    started = time.monotonic()
    await batcher.embed(["b"])
    assert time.monotonic() - started > 0.5


async def test_background_texts_keep_to_half_the_share_and_a_lookup_goes_first(
    worker: WorkerThread,
) -> None:
    passes: list[list[str]] = []

    def slow(texts: list[str]) -> list[list[float]]:
        passes.append(list(texts))
        deadline = time.thread_time() + 0.07
        while time.thread_time() < deadline:
            pass
        return [[1.0] for _ in texts]

    batcher = MicroBatcher(slow, worker, max_busy=0.1)
    await batcher.embed(["a"])  # 0.07 s of CPU: past half the share, within the share
    stored = asyncio.ensure_future(batcher.embed(["stored"], background=True))
    await asyncio.sleep(0.05)
    assert not stored.done()  # it rests until the share is half used
    await batcher.embed(["looked up"])  # a lookup wakes the worker and needs no rest
    await stored
    assert passes == [["a"], ["looked up"], ["stored"]]
