"""Calibration runs labelled pairs through the cache itself, so it measures what the cache does."""

from __future__ import annotations

import pytest

from application.calibration import LabelledPair, MemoEmbedder, parse_pairs, sweep
from application.semantic_cache import CachePolicy, SemanticCache
from domain.same_question import QuestionJudge
from tests.fakes import (
    FakeClock,
    MemoryIndex,
    MemoryStore,
    RecordingMetrics,
    RecordingTracer,
    WordEmbedder,
)

LONG = "word " * 60  # beyond WordEmbedder's window of 40 words
PAIRS = [
    LabelledPair("How do I reset my password?", "how do i reset my password", True, "near"),
    LabelledPair("How do I reset my password?", "How can I reset my password", True, "near"),
    LabelledPair("Is the shop open on Sundays?", "Is the shop closed on Sundays?", False, "neg"),
    LabelledPair(LONG + "Who wrote Hamlet?", LONG + "Who wrote Macbeth?", False, "long"),
    LabelledPair(LONG + "Who wrote Hamlet?", LONG + "Who wrote Hamlet?", True, "long"),
]


async def test_pairs_go_through_the_cache_per_category_and_threshold() -> None:
    clock, metrics = FakeClock(), RecordingMetrics()
    inner = WordEmbedder()
    embedder = MemoEmbedder(inner)
    index, store = MemoryIndex(), MemoryStore(clock)

    def cache_at(threshold: float) -> SemanticCache:
        policy = CachePolicy(threshold=threshold, ttl=60.0, timeout=5.0)
        return SemanticCache(
            embedder, index, store, policy, judge, clock, metrics, RecordingTracer()
        )

    judge = QuestionJudge()
    await embedder.prefill(PAIRS, judge)
    reports = await sweep(cache_at, embedder, PAIRS, [0.8, 0.99], judge)
    low, high = (r.summary for r in reports)
    rates = {(c.category, c.should_hit): (c.rate.hits, c.rate.pairs) for c in low.categories}
    assert rates == {
        ("near", True): (2, 2),
        ("neg", False): (0, 1),  # cosine lets it through, the judge does not
        ("long", False): (0, 1),  # beyond the window: exact tier only
        ("long", True): (1, 1),  # ... where the identical prompt hits
    }
    assert (low.hit_rate.hits, low.hit_rate.pairs) == (3, 3)
    assert (low.false_hit_rate.hits, low.false_hit_rate.pairs) == (0, 2)
    assert high.hit_rate.hits == 2  # the paraphrase is below 0.99; case and "?" embed alike
    assert reports[0].false_hits_of_cosine_alone.hits == 2  # what the judge and window prevent
    assert metrics.semantic_skips.count("different_question") >= 1
    # each text embedded once over the whole sweep (MemoEmbedder); the long must-not pair only
    # for the cosine-alone column
    assert len(inner.calls) == len(set(inner.calls)) == 6


def test_pairs_are_parsed_by_half_and_a_bad_line_is_named() -> None:
    text = (
        '{"a": "x", "b": "y", "should_hit": true, "category": "near", "half": "tune"}\n\n'
        '{"a": "x", "b": "z", "should_hit": false, "half": "check"}\n'
    )
    assert [p.category for p in parse_pairs(text, "f")] == ["near", "uncategorised"]
    assert [p.b for p in parse_pairs(text, "f", "check")] == ["z"]
    with pytest.raises(ValueError, match="f:2: should_hit"):
        parse_pairs('{"a": "x", "b": "y", "should_hit": true}\n{"a": "x", "b": "y"}', "f")
    with pytest.raises(ValueError, match="no labelled pairs in half 'other'"):
        parse_pairs(text, "f", "other")
