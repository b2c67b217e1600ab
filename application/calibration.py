"""How the cache would answer labelled prompt pairs: per category and per threshold.

Each pair goes through the cache itself (`SemanticCache.store` of `a`, then `lookup` of `b`, in
a scope of its own), so what is measured is the decision the cache makes: the exact tier, the
embedder's input window, cosine and the same-question judge. Nothing here re-implements it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from application.ports import Embedder, ResponseCache
from application.semantic_cache import SemanticCache
from domain.model import (
    CacheStatus,
    Completion,
    FinishReason,
    InferenceRequest,
    Message,
    Role,
    Usage,
)
from domain.same_question import QuestionJudge

MODEL = "calibration"
PROVIDER = "calibration"
_ANSWER = Completion("the stored answer", MODEL, PROVIDER, FinishReason.STOP, Usage(1, 1))


@dataclass(frozen=True, slots=True)
class LabelledPair:
    a: str
    b: str
    should_hit: bool
    category: str = "uncategorised"
    half: str = ""  # tune / check / fresh: which rules were developed on it (docs/cache.md)


@dataclass(frozen=True, slots=True)
class Outcome:
    pair: LabelledPair
    status: CacheStatus  # EXACT, SEMANTIC or MISS

    @property
    def hit(self) -> bool:
        return self.status is not CacheStatus.MISS


@dataclass(frozen=True, slots=True)
class Rate:
    hits: int
    pairs: int

    @property
    def share(self) -> float:
        return self.hits / self.pairs if self.pairs else 0.0


@dataclass(frozen=True, slots=True)
class CategoryReport:
    category: str
    should_hit: bool
    rate: Rate  # hits among the category's pairs: wanted when should_hit, false hits otherwise


@dataclass(frozen=True, slots=True)
class Summary:
    hit_rate: Rate  # of the pairs that should hit, those that do
    false_hit_rate: Rate  # of the pairs that must not hit, those that do
    categories: list[CategoryReport]


@dataclass(frozen=True, slots=True)
class ThresholdReport:
    threshold: float
    summary: Summary
    false_hits_of_cosine_alone: Rate  # must-not pairs whose embeddings are that close
    halves: dict[str, Summary]  # the same, for each half's pairs


def parse_pairs(text: str, source: str, half: str | None = None) -> list[LabelledPair]:
    """JSON lines `{"a", "b", "should_hit", "category"?, "half"?}`; only those of `half` when
    given. ValueError (naming the line) for anything else."""
    pairs = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        item = json.loads(line)
        if not isinstance(item, dict) or not isinstance(item.get("should_hit"), bool):
            raise ValueError(f"{source}:{number}: should_hit must be true or false")
        if not isinstance(item.get("a"), str) or not isinstance(item.get("b"), str):
            raise ValueError(f"{source}:{number}: a and b must be strings")
        if half is None or item.get("half") == half:
            category = str(item.get("category", "uncategorised"))
            pairs.append(LabelledPair(
                item["a"], item["b"], item["should_hit"], category, str(item.get("half", ""))
            ))  # fmt: skip
    if not pairs:
        raise ValueError(f"{source}: no labelled pairs" + (f" in half {half!r}" if half else ""))
    return pairs


def render(default: ThresholdReport, rows: Sequence[ThresholdReport]) -> str:
    """The report `llm-proxy calibrate` prints: per category (and per half: hits/pairs) at the
    configured threshold, the totals per half, then the sweep."""
    summary, halves = default.summary, default.halves
    lines = [
        f"at SIMILARITY_THRESHOLD {default.threshold:.2f}:",
        f"{'category':<24} {'pairs':>5}  {'should hit':<10}  {'hits':>5}  {'rate':>6}"
        + "".join(f"  {name:>9}" for name in halves),
    ]
    for c in summary.categories:
        in_halves = {
            name: {(h.category, h.should_hit): h.rate for h in half.categories}
            for name, half in halves.items()
        }
        lines.append(
            f"{c.category:<24} {c.rate.pairs:5d}  {'yes' if c.should_hit else 'no':<10}  "
            f"{c.rate.hits:5d}  {c.rate.share:6.1%}"
            + "".join(
                f"  {_fraction(rates.get((c.category, c.should_hit))):>9}"
                for rates in in_halves.values()
            )
        )
    lines.append(_totals("", summary))
    lines += [_totals(f"half {name}: ", half) for name, half in halves.items()]
    lines += ["", "threshold  hit rate  false-hit rate  false-hit rate of cosine alone"]
    for row in rows:
        lines.append(
            f"{row.threshold:9.2f}  {row.summary.hit_rate.share:8.1%}  "
            f"{row.summary.false_hit_rate.share:14.1%}  "
            f"{row.false_hits_of_cosine_alone.share:30.1%}"
        )
    return "\n".join(lines)


def _fraction(rate: Rate | None) -> str:
    return f"{rate.hits}/{rate.pairs}" if rate else "-"


def _totals(label: str, summary: Summary) -> str:
    hit, false = summary.hit_rate, summary.false_hit_rate
    return (
        f"{label}hit rate {hit.share:.1%} ({hit.hits}/{hit.pairs} should-hit pairs); "
        f"false-hit rate {false.share:.1%} ({false.hits}/{false.pairs} must-not pairs)"
    )


def _request(text: str, pair: int) -> InferenceRequest:
    # A tenant per pair: a pair's prompts never meet another pair's in the cache.
    return InferenceRequest(MODEL, (Message(Role.USER, text),), tenant=f"pair-{pair}")


async def store_all(cache: SemanticCache, pairs: Sequence[LabelledPair]) -> None:
    for i, pair in enumerate(pairs):
        await cache.store(_request(pair.a, i), _ANSWER)
    await cache.index_pending()  # the stored prompts were never looked up: none has a vector


async def look_up_all(cache: ResponseCache, pairs: Sequence[LabelledPair]) -> list[Outcome]:
    outcomes = []
    for i, pair in enumerate(pairs):
        answer = await cache.lookup(_request(pair.b, i), PROVIDER)
        outcomes.append(Outcome(pair, answer.cache.status if answer else CacheStatus.MISS))
    return outcomes


def summarise(outcomes: Sequence[Outcome]) -> Summary:
    categories: dict[str, list[Outcome]] = {}
    for outcome in outcomes:
        categories.setdefault(outcome.pair.category, []).append(outcome)
    reports = []
    for name, members in categories.items():
        kinds = {o.pair.should_hit for o in members}
        for should_hit in sorted(kinds, reverse=True):
            chosen = [o for o in members if o.pair.should_hit is should_hit]
            reports.append(CategoryReport(name, should_hit, _rate(chosen)))
    return Summary(
        _rate([o for o in outcomes if o.pair.should_hit]),
        _rate([o for o in outcomes if not o.pair.should_hit]),
        reports,
    )


async def sweep(
    cache_at: Callable[[float], SemanticCache],
    embedder: Embedder,
    pairs: Sequence[LabelledPair],
    thresholds: Sequence[float],
    judge: QuestionJudge,
) -> list[ThresholdReport]:
    """The pairs looked up by a cache at each threshold (the entries stored once, by the first;
    caches from `cache_at` share their backends), with what cosine alone would let through."""
    if not thresholds:
        return []
    await store_all(cache_at(thresholds[0]), pairs)
    cosines = await _cosines(embedder, [p for p in pairs if not p.should_hit], judge)
    reports = []
    for threshold in thresholds:
        outcomes = await look_up_all(cache_at(threshold), pairs)
        alone = Rate(sum(c >= threshold for c in cosines), len(cosines))
        halves = {
            half: summarise([o for o in outcomes if o.pair.half == half])
            for half in dict.fromkeys(p.half for p in pairs)
            if half
        }
        reports.append(ThresholdReport(threshold, summarise(outcomes), alone, halves))
    return reports


async def _cosines(
    embedder: Embedder, pairs: Sequence[LabelledPair], judge: QuestionJudge
) -> list[float]:
    seen = judge.embedding_text
    texts = sorted({seen(t) for p in pairs for t in (p.a, p.b)})
    vectors = dict(zip(texts, await embedder.embed(texts), strict=True))
    return [_cosine(vectors[seen(p.a)], vectors[seen(p.b)]) for p in pairs]


class MemoEmbedder(Embedder):
    """An embedder that embeds each text once, in batches when `prefill`ed: a sweep looks the
    same pairs up at twenty thresholds."""

    def __init__(self, inner: Embedder) -> None:
        self._inner = inner
        self.identity = inner.identity
        self.dimension = inner.dimension
        self.input_window = inner.input_window
        self._vectors: dict[str, list[float]] = {}

    def fits(self, text: str) -> bool:
        return self._inner.fits(text)

    async def prefill(self, pairs: Sequence[LabelledPair], judge: QuestionJudge) -> None:
        texts = {judge.embedding_text(t) for p in pairs for t in (p.a, p.b)}
        await self.embed(sorted(t for t in texts if self.fits(t)))

    def expected_wait(self) -> float:
        return 0.0  # the pairs are embedded up front, by prefill

    async def embed(self, texts: Sequence[str], *, background: bool = False) -> list[list[float]]:
        missing = sorted({t for t in texts if t not in self._vectors})
        if missing:
            self._vectors.update(zip(missing, await self._inner.embed(missing), strict=True))
        return [self._vectors[t] for t in texts]


def _rate(outcomes: Sequence[Outcome]) -> Rate:
    return Rate(sum(o.hit for o in outcomes), len(outcomes))


def _cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norm if norm else 0.0
