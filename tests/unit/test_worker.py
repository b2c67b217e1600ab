from __future__ import annotations

import asyncio
import os
import threading

import pytest

from adapters.process.worker import WorkerThread


async def test_calls_run_in_order_on_one_thread_off_the_loop() -> None:
    worker = WorkerThread("test-worker", "the test resource is closed")
    seen: list[tuple[int, str]] = []

    def note(i: int) -> int:
        seen.append((i, threading.current_thread().name))
        return i

    assert worker.call(note, 0) == 0
    assert await asyncio.gather(*(worker.run(note, i) for i in range(1, 6))) == [1, 2, 3, 4, 5]
    assert [i for i, _ in seen] == list(range(6))
    (name,) = {n for _, n in seen}
    assert name.startswith("test-worker")
    assert name != threading.current_thread().name
    await worker.close()


async def test_close_runs_last_after_queued_calls_and_refuses_more() -> None:
    worker = WorkerThread("test-worker", "the test resource is closed")
    order: list[str] = []
    pending = worker.run(order.append, "call")
    await asyncio.gather(pending, worker.close(lambda: order.append("close")))
    assert order == ["call", "close"]
    with pytest.raises(RuntimeError, match="the test resource is closed"):
        await worker.run(order.append, "late")
    worker.submit(order.append, "background")  # ignored once closed
    await worker.close()  # twice is fine
    assert order == ["call", "close"]


async def test_a_niced_worker_runs_at_a_lower_priority_than_the_loop() -> None:
    def own_nice() -> int:
        return os.getpriority(os.PRIO_PROCESS, 0)  # the calling thread's

    before = own_nice()
    niced = WorkerThread("test-niced", "closed", nice=5)
    plain = WorkerThread("test-plain", "closed")
    assert await niced.run(own_nice) == min(19, before + 5)
    assert await plain.run(own_nice) == before
    assert own_nice() == before  # the loop's thread is untouched
    await niced.close()
    await plain.close()
