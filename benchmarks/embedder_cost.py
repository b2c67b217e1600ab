"""CPU cost of the local embedder per text: the old NumPy forward pass (benchmarks/numpy_minilm.py),
the onnxruntime float32 graph that ran before, and the product's int8 graph (quantised per token,
adapters/outbound/embedders/minilm_graph.py), in one run.

    .venv/bin/python benchmarks/embedder_cost.py [--rounds 5] [--repeats 100]

One thread and one core: the process pins itself to one CPU (like `taskset -c N`), BLAS and
OpenMP are limited to one thread before NumPy loads, onnxruntime runs with one intra-op thread.
Cost is process CPU time (time.process_time), so time spent waiting for a core that neighbours
hold is not counted; their cache and memory traffic still is: compare the ratios of one run.

- single: one 20-token text ([CLS] and [SEP] included), embedded alone, `--repeats` times;
- batch32: the distinct prompts of benchmarks/cache_pairs.jsonl as the cache embeds them
  (the judge's embedding_text), shuffled, in batches of 32 (as the micro-batcher hands
  them over: the model sorts each batch by length and pads little).

The embedders take turns within each round, so that a noisy neighbour hits them alike; the
figure is the median over `--rounds`.
"""

from __future__ import annotations

import os

for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_variable] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from numpy_minilm import NumpyMiniLM  # noqa: E402

from adapters.outbound.embedders.local import MiniLM, bundled_model_dir  # noqa: E402
from container import question_judge  # noqa: E402

SINGLE = "Please explain, in two short sentences, how a semantic cache decides that prompts match."
PAIRS = ROOT / "benchmarks" / "cache_pairs.jsonl"


def prompts() -> list[str]:
    lines = [json.loads(line) for line in PAIRS.read_text().splitlines() if line.strip()]
    judge = question_judge()
    texts = sorted({judge.embedding_text(pair[side]) for pair in lines for side in ("a", "b")})
    random.Random(0).shuffle(texts)
    return texts[: len(texts) // 32 * 32]


def cpu_ms_per_text(run: Callable[[], object], texts: int) -> float:
    start = time.process_time()
    run()
    return (time.process_time() - start) * 1000 / texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=100, help="single-text calls per round")
    args = parser.parse_args()
    cpu = sorted(os.sched_getaffinity(0))[-1]
    os.sched_setaffinity(0, {cpu})
    model_dir = bundled_model_dir()
    models: dict[str, tuple[MiniLM, int]] = {
        "numpy float32 (old)": (NumpyMiniLM(model_dir), 32),
        "onnxruntime float32 (before)": (MiniLM(model_dir, quantized=False), 32),
        "onnxruntime int8 (new)": (MiniLM(model_dir), 32),
    }
    texts = prompts()
    tokens = [len(ids) for ids in models["numpy float32 (old)"][0].token_ids(texts)]
    single_tokens = len(models["numpy float32 (old)"][0].token_ids([SINGLE])[0])
    batches = [texts[i : i + 32] for i in range(0, len(texts), 32)]

    def single(model: MiniLM) -> Callable[[], object]:
        return lambda: [model.encode([SINGLE]) for _ in range(args.repeats)]

    def batched(model: MiniLM, batch_size: int) -> Callable[[], object]:
        return lambda: [model.encode(batch, batch_size) for batch in batches]

    for model, _ in models.values():  # warm up: first calls allocate
        model.encode(texts[:64])
    figures: dict[str, dict[str, list[float]]] = {n: {"single": [], "batch": []} for n in models}
    for _ in range(args.rounds):
        for name, (model, batch_size) in models.items():
            figures[name]["single"].append(cpu_ms_per_text(single(model), args.repeats))
            figures[name]["batch"].append(cpu_ms_per_text(batched(model, batch_size), len(texts)))
    print(
        f"CPU {cpu} only, one thread; median of {args.rounds} rounds; single: one text of "
        f"{single_tokens} tokens x {args.repeats}; batch32: {len(texts)} prompts of "
        f"{PAIRS.name} (mean {statistics.mean(tokens):.1f} tokens, median "
        f"{statistics.median(tokens):.0f}) in batches of 32"
    )
    print(f"{'embedder':<28} {'single ms':>9} {'ratio':>6} {'batch32 ms/text':>15} {'ratio':>6}")
    base = {kind: statistics.median(runs) for kind, runs in figures["numpy float32 (old)"].items()}
    for name, kinds in figures.items():
        one, many = statistics.median(kinds["single"]), statistics.median(kinds["batch"])
        print(
            f"{name:<28} {one:9.2f} {base['single'] / one:5.2f}x "
            f"{many:15.2f} {base['batch'] / many:5.2f}x"
        )


if __name__ == "__main__":
    main()
