"""`llm-proxy calibrate` with several local embedders in one run, so that each sees the same
same-question judge and the same pairs: the old NumPy MiniLM (benchmarks/numpy_minilm.py), the
onnxruntime float32 graph that ran before, and the product's int8 graph (quantised per token).

    .venv/bin/python benchmarks/embedder_quality.py [benchmarks/cache_pairs.jsonl] [--half check]

For each embedder: the hit rate (of should-hit pairs) and false-hit rate (of must-not pairs) at
SIMILARITY_THRESHOLD and at a few thresholds around it, what cosine alone would let through, and
the change against the old embedder in points. Then the cosine of every text's new vector to its
old one (worst and mean).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from numpy_minilm import NumpyMiniLM  # noqa: E402

from adapters.outbound.embedders.local import LocalMiniLMEmbedder, MiniLM  # noqa: E402
from adapters.process.settings import load_settings  # noqa: E402
from application.calibration import ThresholdReport, parse_pairs  # noqa: E402
from application.ports import Embedder  # noqa: E402
from cli import calibration  # noqa: E402
from container import question_judge  # noqa: E402


class ModelEmbedder(Embedder):
    """A MiniLM called directly (calibration embeds everything up front, in batches)."""

    dimension = LocalMiniLMEmbedder.dimension
    input_window = LocalMiniLMEmbedder.input_window

    def __init__(self, name: str, model: MiniLM, batch_size: int, window: Embedder) -> None:
        self.identity = f"local:{name}"
        self.model = model
        self.batch_size = batch_size
        self._window = window

    def fits(self, text: str) -> bool:
        return self._window.fits(text)

    def expected_wait(self) -> float:
        return 0.0

    async def embed(self, texts: Sequence[str], *, background: bool = False) -> list[list[float]]:
        vectors: list[list[float]] = self.model.encode(texts, self.batch_size).tolist()
        return vectors


def line(name: str, row: ThresholdReport, base: ThresholdReport) -> str:
    hit, false = row.summary.hit_rate, row.summary.false_hit_rate
    d_hit = 100 * (hit.share - base.summary.hit_rate.share)
    d_false = 100 * (false.share - base.summary.false_hit_rate.share)
    return (
        f"{name:<28} {row.threshold:9.2f} {hit.share:8.1%} ({hit.hits:3d}/{hit.pairs}) "
        f"{d_hit:+5.1f} {false.share:8.1%} ({false.hits:3d}/{false.pairs}) {d_false:+5.1f} "
        f"{row.false_hits_of_cosine_alone.share:9.1%}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "pairs", nargs="?", type=Path, default=ROOT / "benchmarks/cache_pairs.jsonl"
    )
    parser.add_argument("--half", help="only the pairs of this half (tune or check)")
    args = parser.parse_args()
    settings = load_settings(cache_mode="embedded")
    pairs = parse_pairs(args.pairs.read_text(), str(args.pairs), args.half)
    default = settings.similarity_threshold
    thresholds = [default, *(round(default + step, 2) for step in (-0.05, -0.02, 0.02))]
    window = LocalMiniLMEmbedder()
    model_dir = window.model_dir
    embedders = [
        ModelEmbedder("numpy float32 (old)", NumpyMiniLM(model_dir), 32, window),
        ModelEmbedder(
            "onnxruntime float32 (before)", MiniLM(model_dir, quantized=False), 32, window
        ),
        ModelEmbedder("onnxruntime int8 (new)", MiniLM(model_dir), 32, window),
    ]
    reports = {e.identity: calibration(settings, pairs, thresholds, e) for e in embedders}
    print(f"{len(pairs)} pairs from {args.pairs}; the same judge for every embedder")
    print(
        f"{'embedder':<28} threshold {'hit rate':>17} {'Δ pt':>5} {'false-hit':>17} {'Δ pt':>5} "
        f"cosine alone"
    )
    base = reports[embedders[0].identity]
    for identity, rows in reports.items():
        for row, base_row in zip(rows, base, strict=True):
            print(line(identity.removeprefix("local:"), row, base_row))
    judge = question_judge()
    texts = sorted({judge.embedding_text(t) for p in pairs for t in (p.a, p.b)})
    old = embedders[0].model.encode(texts)
    for e in embedders[1:]:
        cosines = np.sum(old * e.model.encode(texts, e.batch_size), axis=1)
        print(
            f"{e.identity.removeprefix('local:')}: cosine to the old vector over {len(texts)} "
            f"texts: min {cosines.min():.6f}, mean {cosines.mean():.6f}"
        )
    window.close()


if __name__ == "__main__":
    main()
