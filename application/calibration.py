"""How a similarity threshold would behave: hit and false-hit rates over labelled prompt pairs."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from application.ports import Embedder
from domain.cache_policy import interchangeable


@dataclass(frozen=True, slots=True)
class LabelledPair:
    a: str
    b: str
    should_hit: bool


@dataclass(frozen=True, slots=True)
class ScoredPair:
    pair: LabelledPair
    similarity: float
    guard_allows: bool

    def hits(self, threshold: float) -> bool:
        return self.guard_allows and self.similarity >= threshold


@dataclass(frozen=True, slots=True)
class ThresholdReport:
    threshold: float
    hit_rate: float  # of the pairs that should hit, the share that does
    false_hit_rate: float  # of the pairs that should not hit, the share that does
    false_hits_without_guard: float  # the same, with cosine alone


async def score(embedder: Embedder, pairs: Sequence[LabelledPair]) -> list[ScoredPair]:
    texts = sorted({text for p in pairs for text in (p.a, p.b)})
    vectors = dict(zip(texts, await embedder.embed(texts), strict=True))
    return [
        ScoredPair(p, _cosine(vectors[p.a], vectors[p.b]), interchangeable(p.a, p.b)) for p in pairs
    ]


def report(scored: Sequence[ScoredPair], thresholds: Sequence[float]) -> list[ThresholdReport]:
    positives = [s for s in scored if s.pair.should_hit]
    negatives = [s for s in scored if not s.pair.should_hit]
    return [
        ThresholdReport(
            t,
            _share([s.hits(t) for s in positives]),
            _share([s.hits(t) for s in negatives]),
            _share([s.similarity >= t for s in negatives]),
        )
        for t in thresholds
    ]


def _share(outcomes: Sequence[bool]) -> float:
    return sum(outcomes) / len(outcomes) if outcomes else 0.0


def _cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norm if norm else 0.0
