"""The remote vector index: one collection on a Qdrant server, through `AsyncQdrantClient`.

The caller builds the client (from QDRANT_URL, or `AsyncQdrantClient(location=":memory:")` /
`path=...` for qdrant-client's local mode) and hands it over: `close()` closes it. Every write
waits for the server to apply it, so a search right after an upsert or a delete sees it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from qdrant_client import AsyncQdrantClient, models
from qdrant_client.http.exceptions import UnexpectedResponse

from adapters.outbound.vector import (
    ENTRY_KEY,
    EXPIRES_AT,
    SCOPE,
    IncompatibleIndex,
    as_floats,
    payload,
    vector_match,
)
from application.ports import VectorIndex, VectorMatch, VectorPoint

log = logging.getLogger(__name__)

DEFAULT_COLLECTION = "llm_cache"

PAYLOAD_INDEXES = {
    SCOPE: models.PayloadSchemaType.KEYWORD,
    ENTRY_KEY: models.PayloadSchemaType.KEYWORD,
    EXPIRES_AT: models.PayloadSchemaType.FLOAT,
}


class QdrantIndex(VectorIndex):
    def __init__(self, client: AsyncQdrantClient, collection: str = DEFAULT_COLLECTION) -> None:
        self._client = client
        self._collection = collection
        self._closed = False

    async def ensure_ready(self, dimension: int) -> None:
        """Creates the collection (cosine) when missing, checks an existing one, and adds the
        payload indexes it lacks. Raises IncompatibleIndex when the collection holds vectors of
        another size or distance."""
        if not await self._client.collection_exists(self._collection):
            await self._create(dimension)
        info = await self._client.get_collection(self._collection)
        self._check(info.config.params.vectors, dimension)
        for field, schema in PAYLOAD_INDEXES.items():
            if field not in info.payload_schema:
                await self._index(field, schema)

    async def search(
        self, vector: Sequence[float], scope: str, now: float, limit: int
    ) -> list[VectorMatch]:
        if limit < 1:
            return []
        response = await self._client.query_points(
            self._collection,
            query=as_floats(vector),
            query_filter=live_in(scope, now),
            limit=limit,
            with_payload=True,
            with_vectors=False,
        )
        return [vector_match(p.id, p.score, p.payload) for p in response.points]

    async def upsert(self, point: VectorPoint) -> None:
        stored = models.PointStruct(
            id=point.point_id, vector=as_floats(point.vector), payload=payload(point)
        )
        await self._client.upsert(self._collection, points=[stored], wait=True)

    async def delete(self, point_ids: Sequence[str]) -> None:
        if not point_ids:
            return
        ids: list[models.ExtendedPointId] = list(point_ids)
        await self._client.delete(
            self._collection, points_selector=models.PointIdsList(points=ids), wait=True
        )

    async def delete_expired(self, now: float) -> int:
        expired = expired_at(now)
        counted = await self._client.count(self._collection, count_filter=expired, exact=True)
        if counted.count:
            selector = models.FilterSelector(filter=expired)
            await self._client.delete(self._collection, points_selector=selector, wait=True)
        return counted.count

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self._client.close()

    async def _create(self, dimension: int) -> None:
        vectors = models.VectorParams(size=dimension, distance=models.Distance.COSINE)
        try:
            await self._client.create_collection(self._collection, vectors_config=vectors)
        except Exception:
            # Another replica may have created it in between; the check that follows then
            # decides whether it fits.
            if not await self._client.collection_exists(self._collection):
                raise
        log.info(
            "created Qdrant collection %r (%d dimensions, cosine)", self._collection, dimension
        )

    def _check(
        self, vectors: models.VectorParams | dict[str, models.VectorParams] | None, dimension: int
    ) -> None:
        if not isinstance(vectors, models.VectorParams):
            names = ", ".join(sorted(vectors or {})) or "none"
            raise self._incompatible(
                f"has named vectors ({names}), but the cache needs one unnamed vector "
                f"of size {dimension}"
            )
        if vectors.size != dimension:
            raise self._incompatible(
                f"holds vectors of size {vectors.size}, but the embedder makes vectors "
                f"of size {dimension}"
            )
        if vectors.distance != models.Distance.COSINE:
            raise self._incompatible(
                f"uses {vectors.distance.value} distance, but the cache compares by cosine"
            )

    def _incompatible(self, problem: str) -> IncompatibleIndex:
        return IncompatibleIndex(
            f"Qdrant collection {self._collection!r} {problem}: set QDRANT_COLLECTION to another "
            "name, or delete the collection so it is created again (its cached entries are lost)"
        )

    async def _index(self, field: str, schema: models.PayloadSchemaType) -> None:
        try:
            await self._client.create_payload_index(
                self._collection, field, field_schema=schema, wait=True
            )
        except UnexpectedResponse as error:
            # Filters still work without the index, only slower: not worth failing the cache.
            log.warning(
                "Qdrant collection %r: no %s index on %r (%s)",
                self._collection,
                schema.value,
                field,
                error,
            )


def live_in(scope: str, now: float) -> models.Filter:
    return models.Filter(
        must=[
            models.FieldCondition(key=SCOPE, match=models.MatchValue(value=scope)),
            models.FieldCondition(key=EXPIRES_AT, range=models.Range(gt=now)),
        ]
    )


def expired_at(now: float) -> models.Filter:
    return models.Filter(must=[models.FieldCondition(key=EXPIRES_AT, range=models.Range(lte=now))])
