"""A near-free OpenAI-compatible upstream for benchmarks: one pre-encoded chat completion
(finish reason stop, so the proxy's cache stores it) for every POST /v1/chat/completions, in a
process of its own so that it takes no CPU from the proxy's event loop. Not a simulator: no
streaming, no faults, no latency (see simulator/ for those)."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
from collections.abc import Iterator
from contextlib import contextmanager

REPLY = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 0, "model": "gpt-4o",
    "choices": [{"index": 0, "finish_reason": "stop",
                 "message": {"role": "assistant", "content": "a fixed reply"}}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
}).encode()  # fmt: skip


def _serve(port_out: multiprocessing.Queue[int]) -> None:
    from aiohttp import web

    async def reply(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=REPLY, content_type="application/json")

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", reply)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port_out.put(runner.addresses[0][1])
        await asyncio.sleep(3600)  # killed by the benchmark long before

    asyncio.run(main())


@contextmanager
def fixed_upstream() -> Iterator[str]:
    """The upstream's OpenAI base URL (`http://127.0.0.1:PORT/v1`) while it runs."""
    ctx = multiprocessing.get_context("spawn")
    ports: multiprocessing.Queue[int] = ctx.Queue()
    server = ctx.Process(target=_serve, args=(ports,), daemon=True)
    server.start()
    try:
        yield f"http://127.0.0.1:{ports.get(timeout=30)}/v1"
    finally:
        server.kill()
        server.join(10)
