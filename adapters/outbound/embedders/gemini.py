"""Gemini embeddings (Generative Language API, v1beta): `models/{model}:batchEmbedContents`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import quote

import httpx

from adapters.outbound.embedders import as_vector, batches, check_dimension, unit, within_bytes
from adapters.outbound.providers.errors import malformed, utcnow
from adapters.outbound.providers.exchange import post_json
from application.ports import Embedder
from domain.key_pool import ApiKey

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com"
DEFAULT_MODEL = "gemini-embedding-001"
NATIVE_DIMENSIONS = {"gemini-embedding-001": 3072, "text-embedding-004": 768}
INPUT_WINDOW = 2048
"""Tokens of a text that gemini-embedding-001 and text-embedding-004 read (the rest is cut)."""
MAX_REQUESTS = 100
"""Texts the API takes in one batchEmbedContents call; longer lists are sent in several."""
TASK_TYPE = "SEMANTIC_SIMILARITY"
"""What the vectors are for: comparing prompts with each other. Fixed, so the identity
(model and dimension) names the vectors completely."""


class GeminiEmbedder(Embedder):
    """`dimensions`, when given, is sent as `outputDimensionality` (gemini-embedding-001 is
    trained to be cut to 768 or 1536); without it the model's own size is used, which must then
    be known. Gemini normalises only full-size vectors: every vector is normalised here.

    The key travels in the `x-goog-api-key` header, never in the URL (URLs get logged), and
    appears in no repr. Failures are `ProviderFailure`s classified as for the chat providers.
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        key: ApiKey,
        *,
        base_url: str = DEFAULT_BASE_URL,
        model: str = DEFAULT_MODEL,
        dimensions: int | None = None,
        name: str = "gemini",
        max_requests: int = MAX_REQUESTS,
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        model = model.removeprefix("models/")
        if dimensions is None and model not in NATIVE_DIMENSIONS:
            raise ValueError(f"the dimension of {model!r} is unknown: pass dimensions")
        if max_requests < 1:
            raise ValueError("max_requests must be >= 1")
        self.model = model
        self.dimension = check_dimension(
            dimensions if dimensions is not None else NATIVE_DIMENSIONS[model]
        )
        self.identity = f"gemini:{model}:{self.dimension}"
        self._dimensions = dimensions
        self._client = client
        self._key = key
        base = base_url.rstrip("/")
        self._url = f"{base}/v1beta/models/{quote(model, safe='')}:batchEmbedContents"
        self._label = f"{name} embeddings"
        self._max_requests = max_requests
        self._now = now

    input_window = INPUT_WINDOW

    def fits(self, text: str) -> bool:
        return within_bytes(text, self.input_window)

    def __repr__(self) -> str:
        return f"GeminiEmbedder(identity={self.identity!r}, url={self._url!r})"

    def body(self, texts: Sequence[str]) -> dict[str, Any]:
        def request(text: str) -> dict[str, Any]:
            one: dict[str, Any] = {
                "model": f"models/{self.model}",
                "content": {"parts": [{"text": text}]},
                "taskType": TASK_TYPE,
            }
            if self._dimensions is not None:
                one["outputDimensionality"] = self._dimensions
            return one

        return {"requests": [request(text) for text in texts]}

    def expected_wait(self) -> float:
        return 0.0  # an API: its queue is not ours to see

    async def embed(self, texts: Sequence[str], *, background: bool = False) -> list[list[float]]:
        vectors: list[list[float]] = []
        for batch in batches(texts, self._max_requests):
            payload = await post_json(
                self._client, self._url, self.body(batch), {"x-goog-api-key": self._key.value},
                provider=self._label, key=self._key, now=self._now(),
            )  # fmt: skip
            vectors.extend(self._vectors(payload, len(batch)))
        return vectors

    def _vectors(self, payload: Any, count: int) -> list[list[float]]:
        """`embeddings[i].values`, in the order of the requests."""
        embeddings = payload.get("embeddings") if isinstance(payload, dict) else None
        if not isinstance(embeddings, list) or len(embeddings) != count:
            raise malformed(self._label, f"expected a list of {count} embeddings")
        vectors = []
        for embedding in embeddings:
            values = embedding.get("values") if isinstance(embedding, dict) else None
            vector = as_vector(values, self.dimension)
            if vector is None:
                raise malformed(self._label, f"an embedding is not {self.dimension} numbers")
            vectors.append(unit(vector))
        return vectors
