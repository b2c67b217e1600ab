"""Vector indexes for the semantic cache: a Qdrant server
(`adapters.outbound.vector.qdrant.QdrantIndex`) or Qdrant Edge on local disk
(`adapters.outbound.vector.edge.EdgeIndex`).

The composition root imports the module it needs. This package module holds what both share and
deliberately imports neither, so the remote mode never loads the embedded engine and vice versa.

Both store one point per cached prompt under its `point_id`, with the payload
`{scope, entry_key, text, expires_at}`; `scope` and `expires_at` are hard filters applied by the
engine during the search, never after it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from application.ports import VectorMatch, VectorPoint

SCOPE = "scope"
ENTRY_KEY = "entry_key"
TEXT = "text"
EXPIRES_AT = "expires_at"


class IncompatibleIndex(RuntimeError):
    """The existing collection (or shard) cannot hold this embedder's vectors."""


def payload(point: VectorPoint) -> dict[str, Any]:
    return {
        SCOPE: point.scope,
        ENTRY_KEY: point.entry_key,
        TEXT: point.text,
        EXPIRES_AT: float(point.expires_at),
    }


def vector_match(point_id: object, score: float, stored: Mapping[str, Any] | None) -> VectorMatch:
    """A search hit as the port's value; the engine's ids (UUID objects or strings) become str."""
    values = stored or {}
    return VectorMatch(
        point_id=str(point_id),
        similarity=float(score),
        entry_key=str(values.get(ENTRY_KEY, "")),
        text=str(values.get(TEXT, "")),
        expires_at=float(values.get(EXPIRES_AT, 0.0)),
    )


def as_floats(vector: Sequence[float]) -> list[float]:
    """A plain list of Python floats (the engines reject numpy scalars and tuples)."""
    return [float(x) for x in vector]
