"""The remote response store: one Redis key per cached completion, expiring with it."""

from __future__ import annotations

import logging

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from adapters.outbound.store import codec
from application.ports import ResponseStore
from domain.model import Completion

log = logging.getLogger(__name__)

DEFAULT_NAMESPACE = "llmproxy:resp:"
DEFAULT_TIMEOUT = 0.5


def redis_client(addr: str, timeout: float = DEFAULT_TIMEOUT) -> Redis:
    """A client for REDIS_ADDR ("host:port", "[::1]:6379", or a redis:// / rediss:// URL) that
    fails fast when Redis is down or slow and reconnects by itself when it is back.

    Every connect and every reply is bounded by `timeout`. A broken connection (refused, reset,
    closed by a restarted server) is retried once at once on a fresh connection, which is what
    makes the first call after a Redis restart succeed; a timeout is never retried, so a hung
    Redis costs one `timeout` per call. Pooled connections are reopened lazily on the next call.
    """
    if timeout <= 0:
        raise ValueError(f"redis timeout must be positive, got {timeout}")
    retry = Retry(NoBackoff(), retries=1, supported_errors=(RedisConnectionError,))
    if "://" in addr:
        return Redis.from_url(
            addr, socket_connect_timeout=timeout, socket_timeout=timeout, retry=retry
        )
    host, port = parse_addr(addr)
    return Redis(
        host=host, port=port, socket_connect_timeout=timeout, socket_timeout=timeout, retry=retry
    )


def parse_addr(addr: str) -> tuple[str, int]:
    """Splits REDIS_ADDR, "host:port" (port 6379 when absent, IPv6 hosts in brackets)."""
    text = addr.strip()
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f'REDIS_ADDR must look like "host:port" or "[::1]:6379", got {addr!r}')
        port_text = rest[1:]
    else:
        host, _, port_text = text.rpartition(":") if ":" in text else (text, "", "")
        if ":" in host:
            raise ValueError(f'REDIS_ADDR: write an IPv6 host as "[::1]:6379", got {addr!r}')
    if not host or (port_text and not port_text.isdigit()):
        raise ValueError(f'REDIS_ADDR must look like "host:port", got {addr!r}')
    port = int(port_text) if port_text else 6379
    if not 0 < port < 65536:
        raise ValueError(f"REDIS_ADDR port must be within [1, 65535], got {addr!r}")
    return host, port


class RedisStore(ResponseStore):
    """Completions under `<namespace><key>`, each with its own expiry (SET ... PX).

    Redis errors propagate (the cache above fails open and counts them). The store owns the
    client: `close()` closes it.
    """

    def __init__(self, client: Redis, namespace: str = DEFAULT_NAMESPACE) -> None:
        self._client = client
        self._namespace = namespace

    async def get(self, key: str) -> Completion | None:
        data = await self._client.get(self._namespace + key)
        if data is None:
            return None
        completion = codec.decode(data)
        if completion is None:
            # Not deleted: it may be a newer release's format during a rolling upgrade.
            log.warning(
                "unreadable response store entry %s%s: treated as a miss", self._namespace, key
            )
        return completion

    async def put(self, key: str, completion: Completion, ttl: float) -> None:
        """Stores for `ttl` seconds (millisecond precision, at least 1 ms); a `ttl` <= 0 stores
        nothing (and drops what was stored under `key`)."""
        if ttl <= 0:
            await self.delete(key)
            return
        milliseconds = max(1, round(ttl * 1000))
        await self._client.set(self._namespace + key, codec.encode(completion), px=milliseconds)

    async def delete(self, key: str) -> None:
        await self._client.delete(self._namespace + key)

    async def close(self) -> None:
        await self._client.aclose()
