"""A near-free OpenAI-compatible upstream for benchmarks, in a process of its own so that it
takes no CPU from the proxy's event loop: raw asyncio (uvloop when installed), HTTP/1.1
keep-alive, one pre-encoded chat completion (finish reason stop, so the proxy's cache stores it)
for every POST, or one pre-encoded SSE answer when the request asks for a stream. Not a
simulator: no faults, no latency (see simulator/ for those)."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

MODEL = "gpt-4o-mini"

_ANSWER = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "model": MODEL,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 8, "completion_tokens": 1, "total_tokens": 9},
    }
).encode()
_EVENTS = [
    {"choices": [{"index": 0, "delta": {"role": "assistant", "content": "o"}}]},
    {"choices": [{"index": 0, "delta": {"content": "k"}, "finish_reason": "stop"}]},
    {"choices": [], "usage": {"prompt_tokens": 8, "completion_tokens": 2, "total_tokens": 10}},
]
_SSE = (
    b"".join(
        b"data: " + json.dumps({"id": "c", "model": MODEL, **e}).encode() + b"\n\n" for e in _EVENTS
    )
    + b"data: [DONE]\n\n"
)


def _reply(content_type: bytes, body: bytes) -> bytes:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n"
    return head % (content_type, len(body)) + body


JSON_REPLY = _reply(b"application/json", _ANSWER)
SSE_REPLY = _reply(b"text/event-stream", _SSE)


class FixedReply(asyncio.Protocol):
    """HTTP/1.1 keep-alive: every request with a Content-Length body gets the fixed answer."""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].lower()
            at = head.find(b"content-length:")
            length = 0
            if at >= 0:
                stop = head.find(b"\r\n", at)
                length = int(head[at + 15 : stop if stop >= 0 else None])
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            stream = b'"stream": true' in body or b'"stream":true' in body
            self.transport.write(SSE_REPLY if stream else JSON_REPLY)


def run_fixed_upstream(port: int, ready: multiprocessing.Queue[int] | None = None) -> None:
    """Serves on 127.0.0.1:`port` (0: any free one, put on `ready`) until killed."""
    with suppress(ImportError):
        import uvloop

        uvloop.install()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(FixedReply, "127.0.0.1", port, backlog=1024)
        if ready is not None:
            ready.put(server.sockets[0].getsockname()[1])
        async with server:
            await server.serve_forever()

    asyncio.run(main())


@contextmanager
def fixed_upstream() -> Iterator[str]:
    """The upstream's OpenAI base URL (`http://127.0.0.1:PORT/v1`) while it runs."""
    ctx = multiprocessing.get_context("spawn")
    ports: multiprocessing.Queue[int] = ctx.Queue()
    server = ctx.Process(target=run_fixed_upstream, args=(0, ports), daemon=True)
    server.start()
    try:
        yield f"http://127.0.0.1:{ports.get(timeout=30)}/v1"
    finally:
        server.kill()
        server.join(10)
