"""OpenAI embeddings (`POST {base_url}/embeddings`), and servers that speak the same API."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import httpx

from adapters.outbound.embedders import as_vector, batches, check_dimension, unit, within_bytes
from adapters.outbound.providers.errors import malformed, utcnow
from adapters.outbound.providers.exchange import post_json
from application.ports import Embedder
from domain.key_pool import ApiKey

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MODEL = "text-embedding-3-small"
NATIVE_DIMENSIONS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}
INPUT_WINDOW = 8191
"""Tokens an input may have, for every OpenAI embedding model (longer inputs are refused)."""
MAX_INPUTS = 2048
"""Inputs the API takes in one request; longer lists are sent in several."""


class OpenAIEmbedder(Embedder):
    """`dimensions`, when given, is sent to the API (the text-embedding-3 models shorten their
    vectors to it); without it the model's own size is used, which must then be known.

    Failures are `ProviderFailure`s classified as for the chat providers, their messages free
    of key material. The key is sent as a bearer token and appears in no repr.
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        key: ApiKey,
        *,
        base_url: str = DEFAULT_BASE_URL,
        model: str = DEFAULT_MODEL,
        dimensions: int | None = None,
        name: str = "openai",
        max_inputs: int = MAX_INPUTS,
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        if dimensions is None and model not in NATIVE_DIMENSIONS:
            raise ValueError(f"the dimension of {model!r} is unknown: pass dimensions")
        if max_inputs < 1:
            raise ValueError("max_inputs must be >= 1")
        self.model = model
        self.dimension = check_dimension(
            dimensions if dimensions is not None else NATIVE_DIMENSIONS[model]
        )
        self.identity = f"openai:{model}:{self.dimension}"
        self._dimensions = dimensions
        self._client = client
        self._key = key
        self._url = base_url.rstrip("/") + "/embeddings"
        self._label = f"{name} embeddings"
        self._max_inputs = max_inputs
        self._now = now

    input_window = INPUT_WINDOW

    def fits(self, text: str) -> bool:
        return within_bytes(text, self.input_window)

    def __repr__(self) -> str:
        return f"OpenAIEmbedder(identity={self.identity!r}, url={self._url!r})"

    def body(self, texts: Sequence[str]) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "input": list(texts)}
        if self._dimensions is not None:
            body["dimensions"] = self._dimensions
        return body

    def expected_wait(self) -> float:
        return 0.0  # an API: its queue is not ours to see

    async def embed(self, texts: Sequence[str], *, background: bool = False) -> list[list[float]]:
        vectors: list[list[float]] = []
        for batch in batches(texts, self._max_inputs):
            payload = await post_json(
                self._client, self._url, self.body(batch),
                {"Authorization": f"Bearer {self._key.value}"},
                provider=self._label, key=self._key, now=self._now(),
            )  # fmt: skip
            vectors.extend(self._vectors(payload, len(batch)))
        return vectors

    def _vectors(self, payload: Any, count: int) -> list[list[float]]:
        """The answer's vectors in input order: `data[i].index` says which input each is for."""
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, list) or len(data) != count:
            raise malformed(self._label, f"expected a list of {count} embeddings")
        by_index: dict[int, list[float]] = {}
        for item in data:
            index = item.get("index") if isinstance(item, dict) else None
            if not isinstance(index, int) or not 0 <= index < count or index in by_index:
                raise malformed(self._label, f"the embeddings' indexes are not 0..{count - 1}")
            vector = as_vector(item.get("embedding"), self.dimension)
            if vector is None:
                raise malformed(self._label, f"an embedding is not {self.dimension} numbers")
            by_index[index] = unit(vector)
        return [by_index[i] for i in range(count)]
