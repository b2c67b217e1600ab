"""One embedded vector index for every worker: a process that owns the Qdrant Edge shard serves
it over a unix socket (`IndexServer`), and each worker's semantic cache uses `SharedIndex`, a
`VectorIndex` that forwards every call there. A Qdrant Edge shard can be open in one process
only, so this is how an answer stored by one worker is found by the others.

The wire format is small and ours: each message is a 4-byte big-endian length and a JSON array.
A request is `[operation, *arguments]` (a vector as base64 float32, the engine's own precision);
a reply is `["ok", result]` or `["error", kind, message]`. The server answers the requests of one
connection in order, so the client matches replies to requests by position: a call that timed
out leaves its place in the queue, and its late reply is dropped. A broken connection fails the
calls waiting on it (the cache fails open); the next call connects again.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
from array import array
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from typing import Any

from adapters.outbound.vector import IncompatibleIndex, as_floats
from application.ports import VectorIndex, VectorMatch, VectorPoint

log = logging.getLogger(__name__)

MAX_MESSAGE = 16 * 1024 * 1024
CONNECT_TIMEOUT = 1.0
# Errors the client raises as themselves: startup refuses an IncompatibleIndex, as in-process.
_KINDS: dict[str, type[Exception]] = {"IncompatibleIndex": IncompatibleIndex}


class IndexUnavailable(RuntimeError):
    """The index process cannot be reached, or it failed the call."""


def _frame(message: object) -> bytes:
    body = json.dumps(message, separators=(",", ":")).encode()
    return len(body).to_bytes(4, "big") + body


async def _read(reader: asyncio.StreamReader) -> Any:
    size = int.from_bytes(await reader.readexactly(4), "big")
    if size > MAX_MESSAGE:
        raise ValueError(f"a message of {size} bytes is over {MAX_MESSAGE}")
    return json.loads(await reader.readexactly(size))


def _pack(vector: Sequence[float]) -> str:
    return base64.b64encode(array("f", as_floats(vector)).tobytes()).decode()


def _unpack(packed: str) -> list[float]:
    vector = array("f")
    vector.frombytes(base64.b64decode(packed))
    return vector.tolist()


class IndexServer:
    """Serves `index` on the unix socket at `path` (created 0600; a stale one is replaced)."""

    def __init__(self, index: VectorIndex, path: str) -> None:
        self._index = index
        self._path = path
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._operations: dict[str, Callable[..., Awaitable[Any]]] = {
            "ensure_ready": index.ensure_ready,
            "search": self._search,
            "upsert": self._upsert,
            "delete": index.delete,
            "delete_expired": index.delete_expired,
        }

    async def start(self) -> None:
        with suppress(FileNotFoundError):
            os.unlink(self._path)
        self._server = await asyncio.start_unix_server(self._serve, self._path)
        os.chmod(self._path, 0o600)

    async def stop(self) -> None:
        """Stops listening and ends the connections (a call in progress is not answered)."""
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections):
            connection.cancel()
            with suppress(asyncio.CancelledError):
                await connection
        with suppress(FileNotFoundError):
            os.unlink(self._path)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            while True:
                request = await _read(reader)
                writer.write(_frame(await self._call(request)))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the worker went away
        except ValueError as error:
            log.warning("vector index socket: a malformed request (%s); connection closed", error)
        finally:
            self._connections.discard(task)
            writer.close()

    async def _call(self, request: Any) -> list[Any]:
        try:
            operation = self._operations[request[0]]
            return ["ok", await operation(*request[1:])]
        except Exception as error:  # the worker's cache counts it and fails open
            return ["error", type(error).__name__, str(error)]

    async def _search(
        self, packed: str, scope: str, now: float, limit: int
    ) -> list[tuple[str, float, str, str, float]]:
        found = await self._index.search(_unpack(packed), scope, now, limit)
        return [(m.point_id, m.similarity, m.entry_key, m.text, m.expires_at) for m in found]

    async def _upsert(
        self, point_id: str, packed: str, scope: str, entry_key: str, text: str, expires_at: float
    ) -> None:
        point = VectorPoint(point_id, _unpack(packed), scope, entry_key, text, expires_at)
        await self._index.upsert(point)


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.waiting: deque[asyncio.Future[Any]] = deque()
        self.reading = asyncio.create_task(self._read_replies(reader))

    @property
    def open(self) -> bool:
        return not self.reading.done()

    def send(self, request: list[Any]) -> asyncio.Future[Any]:
        reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.waiting.append(reply)
        self.writer.write(_frame(request))
        return reply

    async def close(self) -> None:
        self.reading.cancel()
        with suppress(asyncio.CancelledError):
            await self.reading

    async def _read_replies(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                reply = await _read(reader)
                waiter = self.waiting.popleft()
                if not waiter.done():  # else it timed out: its reply is dropped
                    waiter.set_result(reply)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, IndexError):
            pass
        finally:
            self.writer.close()
            while self.waiting:
                waiter = self.waiting.popleft()
                if not waiter.done():
                    waiter.set_exception(IndexUnavailable("the vector index process went away"))


class SharedIndex(VectorIndex):
    """The index served by `IndexServer` at the unix socket `path`."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._connection: _Connection | None = None
        self._connecting = asyncio.Lock()
        self._closed = False

    async def ensure_ready(self, dimension: int) -> None:
        await self._request("ensure_ready", dimension)

    async def search(
        self, vector: Sequence[float], scope: str, now: float, limit: int
    ) -> list[VectorMatch]:
        if limit < 1:
            return []
        found = await self._request("search", _pack(vector), scope, now, limit)
        return [VectorMatch(*match) for match in found]

    async def upsert(self, point: VectorPoint) -> None:
        await self._request(
            "upsert", point.point_id, _pack(point.vector), point.scope, point.entry_key,
            point.text, point.expires_at,
        )  # fmt: skip

    async def delete(self, point_ids: Sequence[str]) -> None:
        if point_ids:
            await self._request("delete", list(point_ids))

    async def delete_expired(self, now: float) -> int:
        return int(await self._request("delete_expired", now))

    async def close(self) -> None:
        self._closed = True
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.close()

    async def _request(self, operation: str, *arguments: Any) -> Any:
        if self._closed:
            raise RuntimeError("the shared vector index is closed")
        connection = await self._connected()
        reply = await connection.send([operation, *arguments])
        if reply[0] == "ok":
            return reply[1]
        kind, message = reply[1], reply[2]
        if kind in _KINDS:
            raise _KINDS[kind](message)
        raise IndexUnavailable(f"{kind}: {message}")

    async def _connected(self) -> _Connection:
        connection = self._connection
        if connection is not None and connection.open:
            return connection
        async with self._connecting:
            if self._connection is None or not self._connection.open:
                try:
                    async with asyncio.timeout(CONNECT_TIMEOUT):
                        streams = await asyncio.open_unix_connection(self._path)
                except (OSError, TimeoutError) as error:
                    raise IndexUnavailable(
                        f"cannot reach the vector index process at {self._path}: {error}"
                    ) from None
                self._connection = _Connection(*streams)
            return self._connection
