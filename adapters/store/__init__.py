"""Response stores: where cached completions live (Redis, or SQLite on local disk)."""

from adapters.store.embedded import EmbeddedStore
from adapters.store.redis import RedisStore, redis_client

__all__ = ["EmbeddedStore", "RedisStore", "redis_client"]
