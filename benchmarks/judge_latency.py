"""How long the same-question judge takes per candidate, for prompts under 64 words.

Every labelled pair of `benchmarks/cache_pairs.jsonl` (single-line, under 64 words) is judged
each round, both prompts read from scratch (the judge remembers nothing between calls). Prints
p50, p99 and the maximum of each pair's best time over --rounds rounds (what the judge costs; a
busy shared host's preemptions are not its cost) and of every call; also the time to load the
word lists once (at startup). Pin it to one core on a shared host:

    taskset -c 1 .venv/bin/python benchmarks/judge_latency.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from adapters.outbound.lexicon import english_lexicon
from domain.same_question import QuestionJudge

PAIRS = Path(__file__).with_name("cache_pairs.jsonl")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    started = time.perf_counter()
    lexicon = english_lexicon()
    loaded = time.perf_counter() - started
    rows = [json.loads(line) for line in PAIRS.read_text().splitlines() if line.strip()]
    pairs = [
        (r["a"], r["b"])
        for r in rows
        if "\n" not in r["a"] + r["b"] and max(len(r["a"].split()), len(r["b"].split())) < 64
    ]
    judge = QuestionJudge(lexicon)
    judge.same(*pairs[0], 1.0, 0.95)  # compiles what Python compiles lazily
    rounds: list[list[float]] = []
    for _ in range(args.rounds):
        timings = []
        for a, b in pairs:
            start = time.perf_counter()
            judge.same(b, a, 1.0, 0.95)
            timings.append((time.perf_counter() - start) * 1000)
        rounds.append(timings)
    every = sorted(t for timings in rounds for t in timings)
    best = sorted(min(times) for times in zip(*rounds, strict=True))
    print(f"word lists loaded in {loaded:.2f} s ({len(lexicon.frequencies)} words)")
    print(f"{len(pairs)} pairs under 64 words, both prompts read each time, in ms:")
    print(f"  each pair's best of {args.rounds} rounds: {_percentiles(best)}")
    print(f"  every call (with the host's preemptions): {_percentiles(every)}")


def _percentiles(ms: list[float]) -> str:
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return f"p50 {statistics.median(ms):.3f}, p99 {p99:.3f}, max {ms[-1]:.3f}"


if __name__ == "__main__":
    main()
