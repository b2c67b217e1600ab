"""Latency of the embedded semantic cache as a client sees it: a miss (answered by an upstream
simulator with a fixed latency), an exact hit and a semantic hit (a paraphrase the local MiniLM
embedder, the similarity threshold and the same-question judge accept), through the proxy over
gRPC. Then, if benchmarks/cache_pairs.jsonl exists, `llm-proxy calibrate` over its labelled
pairs: hit and false-hit rates per category, and per threshold 0.80-0.99.

    .venv/bin/python benchmarks/cache_latency.py [--requests 100] [--upstream-latency 0.2]
        [--threshold 0.95] [--warmup 10] [--blas-threads N] [--busy-cores N]
        [--pairs FILE | --no-calibration]

The proxy (built by the real container with CACHE_MODE=embedded and a fresh CACHE_DIR, started
by `serve()`) and the simulator run in a child process, so they do not share the client's event
loop. Calls are sequential. `--blas-threads N` sets OPENBLAS_NUM_THREADS (and OMP_NUM_THREADS)
for the proxy process; by default it inherits this process's environment. `--busy-cores N` runs N
busy-looping processes during the measurement, as other work on a shared host would.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import multiprocessing.synchronize
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import time
from multiprocessing.context import SpawnProcess
from multiprocessing.queues import Queue
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc

from adapters.inbound.grpc.generated import proxy_pb2 as pb
from adapters.inbound.grpc.generated import proxy_pb2_grpc as pb_grpc
from adapters.process.settings import load_settings
from cli import serve
from container import Container
from simulator import SimulatorConfig, running_simulator

ROOT = Path(__file__).resolve().parents[1]
MODEL = "gpt-4o"
PAIRS = ROOT / "benchmarks" / "cache_pairs.jsonl"
CHILD_LIMIT_S = 600.0  # the server child never outlives this
CALL_TIMEOUT_S = 30.0
# Stored prompts and paraphrases the same-question judge accepts (same numbers, only form words
# added). The embedder is given normalised words: a paraphrase must differ in them, or its
# vector would come from the cache's embedding LRU and the embedding would not be measured.
STORED = "What is the capital of country number {i}?"
PARAPHRASE = "What's the capital of country number {i}, please?"
WARM_STORED = "Describe the history of city number {i}."
WARM_PARAPHRASE = "Please describe the history of city number {i}."
THRESHOLDS = [round(0.80 + 0.01 * step, 2) for step in range(20)]


def run_server(
    upstream_latency: float,
    cache_dir: str,
    threshold: float | None,
    ready: Queue[Any],
    stop: multiprocessing.synchronize.Event,
) -> None:
    async def main() -> None:
        config = SimulatorConfig(unary_latency_s=upstream_latency)
        async with running_simulator(config) as sim:
            extra = {} if threshold is None else {"similarity_threshold": threshold}
            settings = load_settings(
                grpc_host="127.0.0.1",
                grpc_port=0,
                http_port=0,
                metrics_port=0,
                cache_mode="embedded",
                cache_dir=cache_dir,
                openai_base_url=sim.openai_base_url,
                gemini_base_url=sim.gemini_base_url,
                openai_api_keys="sk-bench-1,sk-bench-2",
                gemini_api_keys="AIza-bench-1",
                shutdown_grace="2s",
                log_level="WARNING",
                **extra,
            )
            container = Container(settings=settings)
            stopping = asyncio.Event()
            serving = asyncio.create_task(serve(container, stopping))
            server = container.grpc_server()
            async with asyncio.timeout(60):
                while not server.serving:
                    if serving.done():
                        serving.result()  # startup failed: raise its error
                    await asyncio.sleep(0.01)
            ready.put((server.port, settings.similarity_threshold))
            await asyncio.to_thread(stop.wait, CHILD_LIMIT_S)
            stopping.set()
            await asyncio.wait_for(serving, 60)

    try:
        asyncio.run(main())
    except BaseException as error:
        ready.put(f"proxy failed: {type(error).__name__}: {error}")
        raise


def spin(stop: multiprocessing.synchronize.Event, limit_s: float) -> None:
    """Burns one core until `stop` is set or `limit_s` has passed."""
    deadline = time.monotonic() + limit_s
    while not stop.is_set() and time.monotonic() < deadline:
        for _ in range(100_000):
            pass


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def summary(label: str, ms: list[float], note: str = "") -> str:
    if not ms:
        return f"{label:<34} no samples{note}"
    return (
        f"{label:<34} median {statistics.median(ms):8.2f} ms, p99 {percentile(ms, 99):8.2f} ms "
        f"({len(ms)} calls){note}"
    )


class Client:
    def __init__(self, stub: pb_grpc.InferenceServiceStub) -> None:
        self.stub = stub

    async def ask(
        self, prompt: str, *, bypass: bool = False, skip_store: bool = False
    ) -> tuple[float, pb.InferenceResponse]:
        cache = pb.CacheControl(skip_lookup=bypass, skip_store=bypass or skip_store)
        request = pb.InferenceRequest(model=MODEL, prompt=prompt, max_tokens=64, cache=cache)
        started = time.perf_counter()
        response = await self.stub.Infer(request, timeout=CALL_TIMEOUT_S)
        return (time.perf_counter() - started) * 1000, response

    async def wait_stored(self, prompt: str, limit_s: float = 30.0) -> bool:
        """Stores happen in the background after the answer: waits until `prompt` is an exact
        hit (asking without storing, so a miss leaves no trace)."""
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            _, response = await self.ask(prompt, skip_store=True)
            if response.cache.status == pb.CACHE_STATUS_EXACT:
                return True
            await asyncio.sleep(0.1)
        return False


async def measure(port: int, requests: int, warmup: int) -> None:
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.enable_http_proxy", 0)]
    ) as channel:
        await asyncio.wait_for(channel.channel_ready(), 20)
        client = Client(pb_grpc.InferenceServiceStub(channel))

        # warm-up: every path once or more, on prompts the measured phases do not use
        for i in range(warmup):
            await client.ask(WARM_STORED.format(i=i))
            await client.ask(WARM_STORED.format(i=i), bypass=True)
        if warmup:
            await client.wait_stored(WARM_STORED.format(i=warmup - 1))
        for i in range(warmup):
            await client.ask(WARM_STORED.format(i=i))
            await client.ask(WARM_PARAPHRASE.format(i=i))

        unexpected: dict[str, int] = {}

        def check(kind: str, response: pb.InferenceResponse, wanted: int) -> bool:
            if response.cache.status == wanted:
                return True
            unexpected[kind] = unexpected.get(kind, 0) + 1
            return False

        bypass_ms: list[float] = []
        for i in range(requests):
            ms, response = await client.ask(STORED.format(i=i), bypass=True)
            check("bypass", response, pb.CACHE_STATUS_BYPASS)
            bypass_ms.append(ms)

        miss_ms: list[float] = []
        for i in range(requests):
            ms, response = await client.ask(STORED.format(i=i))
            check("miss", response, pb.CACHE_STATUS_MISS)
            miss_ms.append(ms)
        stored = await client.wait_stored(STORED.format(i=requests - 1))

        exact_ms: list[float] = []
        for i in range(requests):
            ms, response = await client.ask(STORED.format(i=i))
            if check("exact", response, pb.CACHE_STATUS_EXACT):
                exact_ms.append(ms)

        semantic_ms: list[float] = []
        semantic_missed_ms: list[float] = []
        similarities: list[float] = []
        for i in range(requests):
            ms, response = await client.ask(PARAPHRASE.format(i=i))
            if check("semantic", response, pb.CACHE_STATUS_SEMANTIC):
                semantic_ms.append(ms)
                similarities.append(response.cache.similarity)
            else:
                semantic_missed_ms.append(ms)

    print(summary("upstream, cache bypassed", bypass_ms, " (skip_lookup + skip_store)"))
    print(summary("miss (new prompt -> upstream)", miss_ms))
    print(summary("exact hit", exact_ms))
    print(summary("semantic hit", semantic_ms))
    if semantic_missed_ms:
        print(summary("semantic lookups that missed", semantic_missed_ms))
    if bypass_ms and miss_ms:
        overhead = statistics.median(miss_ms) - statistics.median(bypass_ms)
        print(f"cache overhead on a miss (median miss - median bypass): {overhead:+.2f} ms")
    hits = len(semantic_ms)
    line = f"semantic lookups that hit: {hits}/{requests} ({100 * hits / requests:.1f}%)"
    line += f"; not SEMANTIC: {requests - hits}"
    if similarities:
        low, mid = min(similarities), statistics.median(similarities)
        line += f"; similarity of the hits: min {low:.4f}, median {mid:.4f}"
    print(line)
    if not stored:
        print("warning: the last miss was not stored within 30 s")
    for kind in ("bypass", "miss", "exact", "semantic"):
        if unexpected.get(kind):
            print(f"warning: {unexpected[kind]} {kind} calls had another cache status")


def calibrate(path: Path) -> None:
    print()
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    spec = f"{THRESHOLDS[0]:.2f}:{THRESHOLDS[-1]:.2f}:0.01"
    print(f"$ llm-proxy calibrate {shown} --thresholds {spec}", flush=True)
    command = [sys.executable, "container.py", "calibrate", str(shown), "--thresholds", spec]
    done = subprocess.run(command, timeout=900, cwd=ROOT, check=False)
    if done.returncode != 0:
        print(f"llm-proxy calibrate exited with {done.returncode}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100, help="calls per kind")
    parser.add_argument("--warmup", type=int, default=10, help="warm-up prompts per kind")
    parser.add_argument(
        "--upstream-latency", type=float, default=0.2, help="simulator's unary latency, seconds"
    )
    parser.add_argument(
        "--threshold", type=float, default=None, help="SIMILARITY_THRESHOLD (default: 0.95)"
    )
    parser.add_argument(
        "--blas-threads",
        type=int,
        default=None,
        help="OPENBLAS_NUM_THREADS / OMP_NUM_THREADS for the proxy process (default: inherited)",
    )
    parser.add_argument(
        "--busy-cores", type=int, default=0, help="busy-looping processes during the measurement"
    )
    parser.add_argument("--pairs", type=Path, default=PAIRS, help="labelled pairs (JSON lines)")
    parser.add_argument("--no-calibration", action="store_true")
    args = parser.parse_args()
    if args.requests < 1:
        parser.error("--requests must be >= 1")

    if args.blas_threads is not None:  # read when the child loads NumPy; a spawned child
        for variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):  # inherits os.environ
            os.environ[variable] = str(args.blas_threads)
    blas = os.environ.get("OPENBLAS_NUM_THREADS", "unset")

    began = time.monotonic()
    ctx = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="llm-proxy-bench-cache-") as cache_dir:
        ready: Queue[Any] = ctx.Queue()
        stop = ctx.Event()
        server = ctx.Process(
            target=run_server,
            args=(args.upstream_latency, cache_dir, args.threshold, ready, stop),
            daemon=True,
        )
        server.start()
        spinners: list[SpawnProcess] = []
        try:
            try:
                started = ready.get(timeout=120)
            except queue.Empty:
                raise SystemExit(f"proxy did not start (exit code {server.exitcode})") from None
            if isinstance(started, str):
                raise SystemExit(started)
            port, threshold = started
            print(
                f"embedded cache (fresh CACHE_DIR), local MiniLM embedder, threshold "
                f"{threshold}; simulator unary latency {1000 * args.upstream_latency:.0f} ms; "
                f"{args.requests} sequential calls per kind after {args.warmup} warm-up prompts; "
                f"OPENBLAS_NUM_THREADS {blas}; {args.busy_cores} busy-looping processes",
                flush=True,
            )
            spinners += [
                ctx.Process(target=spin, args=(stop, CHILD_LIMIT_S), daemon=True)
                for _ in range(args.busy_cores)
            ]
            for spinner in spinners:
                spinner.start()
            asyncio.run(measure(port, args.requests, args.warmup))
        finally:
            stop.set()
            for spinner in spinners:
                spinner.join(10)
            server.join(60)
            if server.is_alive():
                server.terminate()
                server.join(10)

    if not args.no_calibration and args.pairs.exists():
        calibrate(args.pairs)
    print(f"(total {time.monotonic() - began:.0f}s)")


if __name__ == "__main__":
    main()
