"""The embedded cache after a burst (issue 16): distinct prompts at 8 concurrent calls, then,
`--pause` seconds later, their case and punctuation variants at 8 concurrent calls. Every
stored answer should be indexed by then (through its lookup's vector, or the index backlog),
so the variants should be semantic hits (target: at least 90 %).

    .venv/bin/python benchmarks/cache_burst.py [--prompts 600] [--concurrency 8] [--pause 30]
        [--set NAME=VALUE ...]

The proxy (the real container, started by `serve()`, default settings, a fresh CACHE_DIR) runs in
a child process in front of the fixed-reply upstream (benchmarks/fixed_upstream.py) in another.
It prints the outcome of each phase, how long the index backlog took to drain, and the proxy's
`cache_semantic_skips_total`, `cache_index_backlog` and `cache_index_dropped_total`.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import sys
import tempfile
import time
from collections import Counter
from multiprocessing.queues import Queue
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

from cache_load import MODEL, run_server, scrape  # noqa: E402
from fixed_upstream import fixed_upstream  # noqa: E402

SUBJECTS = (
    "the invoice", "my parcel", "the warranty", "a refund", "the password", "my account",
    "the subscription", "a gift card", "the delivery slot", "my loyalty points",
)  # fmt: skip
QUESTIONS = (
    "How long does {s} take for order {n}?",
    "Who handles {s} for customer {n}?",
    "Why was {s} for ticket {n} delayed?",
    "Where can I check {s} for order {n}?",
    "When will {s} for booking {n} be ready?",
    "Can you explain {s} on contract {n}?",
)
NAMES = ("cache_semantic_skips_total", "cache_index_backlog", "cache_index_dropped_total",
         "cache_errors_total")  # fmt: skip


def prompts(count: int) -> list[str]:
    combos = [(q, s) for q in QUESTIONS for s in SUBJECTS]
    return [combos[i % len(combos)][0].format(s=combos[i % len(combos)][1], n=1000 + i)
            for i in range(count)]  # fmt: skip


def variant(prompt: str) -> str:
    """Another case, no question mark: another exact key, the same question."""
    return prompt.lower().rstrip("?")


async def phase(port: int, asked: list[str], concurrency: int) -> tuple[Counter[str], float]:
    import grpc

    from adapters.inbound.grpc.generated import proxy_pb2 as pb
    from adapters.inbound.grpc.generated import proxy_pb2_grpc as pb_grpc

    outcomes: Counter[str] = Counter()
    gate = asyncio.Semaphore(concurrency)
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.enable_http_proxy", 0)]
    ) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        await asyncio.wait_for(channel.channel_ready(), 20)

        async def one(prompt: str) -> None:
            async with gate:
                try:
                    reply = await stub.Infer(pb.InferenceRequest(model=MODEL, prompt=prompt),
                                             timeout=30)  # fmt: skip
                    outcomes[pb.CacheStatus.Name(reply.cache.status)] += 1
                except grpc.aio.AioRpcError as error:
                    outcomes[error.code().name] += 1

        started = time.perf_counter()
        await asyncio.gather(*(one(p) for p in asked))
    return outcomes, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=600)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--pause", type=float, default=30.0)
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args()
    if not 0 < args.prompts <= 5000 or not 0 < args.concurrency <= 256 or args.pause > 300:
        raise SystemExit("--prompts in 1..5000, --concurrency in 1..256, --pause at most 300")
    extra = dict(item.split("=", 1) for item in args.set)
    asked = prompts(args.prompts)
    ctx = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as cache_dir, fixed_upstream() as upstream:
        ready: Queue[Any] = ctx.Queue()
        stop = ctx.Event()
        overrides = {"cache_mode": "embedded", "cache_dir": cache_dir, **extra}
        child = ctx.Process(target=run_server, args=(str(ROOT), overrides, upstream, ready, stop),
                            daemon=True)  # fmt: skip
        child.start()
        try:
            got = ready.get(timeout=120)
            if isinstance(got, str):
                raise SystemExit(got)
            port, ops = got
            burst, took = asyncio.run(phase(port, asked, args.concurrency))
            print(f"{args.prompts} distinct prompts at {args.concurrency} concurrent: "
                  f"{dict(burst)} in {took:.1f} s; {scrape(ops, NAMES)}", flush=True)  # fmt: skip
            began, drained = time.monotonic(), None
            while time.monotonic() - began < args.pause:
                if drained is None and scrape(ops, NAMES).get("cache_index_backlog", 0) == 0:
                    drained = time.monotonic() - began
                time.sleep(0.2)
            print("index backlog drained " + (f"{drained:.1f} s after the burst" if drained
                  is not None else f"NOT within {args.pause:.0f} s"), flush=True)  # fmt: skip
            again, took = asyncio.run(phase(port, [variant(p) for p in asked], args.concurrency))
            hits = again.get("CACHE_STATUS_SEMANTIC", 0)
            print(f"their variants {args.pause:.0f} s later at {args.concurrency} concurrent: "
                  f"{dict(again)} in {took:.1f} s; semantic hits {hits}/{args.prompts} "
                  f"({100 * hits / args.prompts:.0f}%, target >= 90%)", flush=True)  # fmt: skip
            print(f"proxy counters at the end: {scrape(ops, NAMES)}")
        finally:
            stop.set()
            child.join(90)
            if child.is_alive():
                child.kill()


if __name__ == "__main__":
    main()
