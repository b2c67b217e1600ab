from __future__ import annotations

import asyncio
import contextlib

from adapters.outbound.providers.cancellation import cancelled_once


async def test_the_call_is_cancelled_once_and_its_cleanup_runs_to_the_end() -> None:
    cancels = 0
    cleaned = asyncio.Event()

    async def exchange() -> None:
        nonlocal cancels
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancels += 1
            await asyncio.sleep(0.01)  # cleanup that awaits, as httpcore's does
            await asyncio.sleep(0.01)
            cleaned.set()
            raise

    caller = asyncio.ensure_future(cancelled_once(exchange()))
    await asyncio.sleep(0)
    caller.cancel()
    await asyncio.sleep(0.005)
    caller.cancel()  # a second cancellation during the cleanup
    await asyncio.gather(caller, return_exceptions=True)
    await asyncio.wait_for(cleaned.wait(), 1)
    assert cancels == 1


async def test_a_result_that_arrives_after_the_caller_left_is_released() -> None:
    released: list[str] = []
    started = asyncio.Event()

    async def send() -> str:
        started.set()
        with contextlib.suppress(asyncio.CancelledError):  # completes despite the cancel
            await asyncio.sleep(0.01)
        return "response"

    async def release(response: str) -> None:
        released.append(response)

    caller = asyncio.ensure_future(cancelled_once(send(), release))
    await started.wait()
    caller.cancel()
    await asyncio.gather(caller, return_exceptions=True)
    for _ in range(10):
        await asyncio.sleep(0.005)
    assert released == ["response"]
