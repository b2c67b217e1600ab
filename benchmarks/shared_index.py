"""Cost of a vector index call through the index process (WORKERS > 1) against the same call on a
Qdrant Edge shard in-process (WORKERS=1): wall-clock latency per call and the calling process's
CPU per call, for a scoped search and for an upsert, sequential calls, 384 dimensions.

    .venv/bin/python benchmarks/shared_index.py [--points 5000] [--scopes 50] [--calls 2000]

The index process is the real one (`llm-proxy serve --vector-index SOCKET`, CACHE_DIR a fresh
temporary directory), so its own CPU is not in the caller's figure; both variants are pinned to
one core each where taskset exists (the caller on CPU 0, the index process on CPU 1).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.outbound.vector.edge import EdgeIndex
from adapters.outbound.vector.shared import SharedIndex
from application.ports import VectorIndex, VectorPoint

ROOT = Path(__file__).resolve().parents[1]
DIM = 384
NOW = time.time()


def vector(rng: random.Random) -> list[float]:
    return [rng.gauss(0.0, 1.0) for _ in range(DIM)]


def point(key: str, values: list[float], scope: str, ttl: float) -> VectorPoint:
    point_id = str(uuid.uuid5(uuid.NAMESPACE_URL, key))
    return VectorPoint(point_id, values, scope, key, key, NOW + ttl)


async def measure(index: VectorIndex, points: int, scopes: int, calls: int) -> dict[str, float]:
    rng = random.Random(7)
    await index.ensure_ready(DIM)
    for i in range(points):
        await index.upsert(point(f"k{i}", vector(rng), f"s{i % scopes}", 3600))
    queries = [vector(rng) for _ in range(calls)]
    figures = {}
    for name in ("search", "upsert"):
        wall, cpu = time.perf_counter(), time.process_time()
        for i, query in enumerate(queries):
            if name == "search":
                await index.search(query, f"s{i % scopes}", NOW, 5)
            else:
                await index.upsert(point(f"u{i}", query, f"s{i % scopes}", 60))
        figures[f"{name} wall ms"] = (time.perf_counter() - wall) / calls * 1000
        figures[f"{name} caller cpu ms"] = (time.process_time() - cpu) / calls * 1000
    await index.close()
    return figures


def through_socket(directory: Path, args: argparse.Namespace) -> dict[str, float]:
    socket = str(directory / "vectors.sock")
    pin = ["taskset", "-c", "1"] if shutil.which("taskset") and (os.cpu_count() or 1) > 1 else []
    server = subprocess.Popen(
        [*pin, sys.executable, "-m", "cli", "serve", "--vector-index", socket],
        cwd=ROOT, env={**os.environ, "CACHE_DIR": str(directory), "LOG_LEVEL": "WARNING"},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(socket) and time.monotonic() < deadline:
            time.sleep(0.05)
        return asyncio.run(measure(SharedIndex(socket), args.points, args.scopes, args.calls))
    finally:
        server.terminate()
        server.wait()


def in_process(directory: Path, args: argparse.Namespace) -> dict[str, float]:
    index = EdgeIndex(directory / "vectors")
    return asyncio.run(measure(index, args.points, args.scopes, args.calls))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=5000)
    parser.add_argument("--scopes", type=int, default=50)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {0})
    results = {}
    for name, run in (("in-process", in_process), ("index process", through_socket)):
        with tempfile.TemporaryDirectory() as directory:
            results[name] = run(Path(directory), args)
    print(f"{args.points} points in {args.scopes} scopes, {args.calls} sequential calls, {DIM}-d")
    print(f"{'':24}{'in-process':>12}{'index process':>15}{'ratio':>8}")
    for figure in results["in-process"]:
        a, b = results["in-process"][figure], results["index process"][figure]
        print(f"{figure:24}{a:12.3f}{b:15.3f}{b / a:8.2f}")


if __name__ == "__main__":
    main()
