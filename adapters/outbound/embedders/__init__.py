"""Embedders of the semantic cache: the local MiniLM model and the OpenAI / Gemini embeddings APIs.

Like `adapters.outbound.providers`, the modules are imported by the composition root only:
`adapters.outbound.embedders.local` (NumPy; loads the model), `adapters.outbound.embedders.openai`,
`adapters.outbound.embedders.gemini`. This package module holds what the two API embedders share and
imports none of them. Every embedder here returns unit-length vectors.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence


def as_vector(value: object, dimension: int) -> list[float] | None:
    """`value` as `dimension` finite floats, or None when it is anything else."""
    if not isinstance(value, list) or len(value) != dimension:
        return None
    if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in value):
        return None
    vector = [float(x) for x in value]
    return vector if all(math.isfinite(x) for x in vector) else None


def unit(vector: list[float]) -> list[float]:
    """Scaled to length 1 (a zero vector is returned as it is)."""
    norm = math.sqrt(math.fsum(x * x for x in vector))
    return [x / norm for x in vector] if norm > 0 else vector


def batches(texts: Sequence[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(texts), size):
        yield list(texts[start : start + size])


def within_bytes(text: str, window: int) -> bool:
    """Whether `text` surely fits a window of `window` tokens of a byte-level BPE or
    SentencePiece-with-byte-fallback tokenizer: none makes more tokens than UTF-8 bytes (one is
    spared for a special token). Conservative: a longer text may fit too, but is not judged by
    its vector."""
    return len(text) < window and len(text.encode()) < window


def check_dimension(dimension: int) -> int:
    if isinstance(dimension, bool) or not isinstance(dimension, int) or dimension < 1:
        raise ValueError(f"an embedding dimension must be a positive integer, not {dimension!r}")
    return dimension
