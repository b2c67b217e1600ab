"""The embedded cache under load: miss latency at fixed request rates of distinct prompts, cache
on against cache off, and the semantic hit rate kept meanwhile.

    .venv/bin/python benchmarks/cache_load.py [--rates 100,200,400] [--seconds 10]
        [--paraphrases 0.1] [--set NAME=VALUE ...] [--tree DIR]

For each configuration (CACHE_MODE=off, then CACHE_MODE=embedded with a fresh CACHE_DIR) a
proxy (the real container, started by `serve()`) runs in a child process, in front of a
fixed-reply upstream in another (benchmarks/fixed_upstream.py: the simulator would share the
proxy's cores and be the bottleneck first). The client sends open-loop `Infer` calls at each
rate for `--seconds`, a new prompt each (`What is the capital of country number N?`), except a
share `--paraphrases` that asks a paraphrase the same-question judge accepts (`What's the
capital of country number N, please?`) of a prompt answered at least two seconds before.
Latency is measured from each call's scheduled send time (a late send counts against the
proxy), so a proxy that falls behind shows it. It prints p50 / p99 of the misses per rate and
configuration, the share of paraphrases served as SEMANTIC hits, and the proxy's
`cache_semantic_skips_total` and `cache_errors_total` (embed timeouts). `--set` passes
settings to the proxy (e.g. `--set cache_embed_max_cpu=1` lifts the embedder's CPU share);
`--tree DIR` imports the proxy from another source tree (an older commit), measured with the
same client.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import multiprocessing.synchronize
import re
import sys
import tempfile
import time
import urllib.request
from multiprocessing.queues import Queue
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from fixed_upstream import fixed_upstream  # noqa: E402

MODEL = "gpt-4o"
STORED = "What is the capital of country number {i}?"
PARAPHRASE = "What's the capital of country number {i}, please?"
CALL_TIMEOUT_S = 30.0
CHILD_LIMIT_S = 900.0


def run_server(
    tree: str, overrides: dict[str, Any], upstream: str, ready: Queue[Any],
    stop: multiprocessing.synchronize.Event,
) -> None:  # fmt: skip
    sys.path.insert(0, tree)
    from adapters.process.settings import load_settings
    from cli import serve
    from container import Container

    async def main() -> None:
        settings = load_settings(
            grpc_host="127.0.0.1", grpc_port=0, metrics_port=0, openai_base_url=upstream,
            openai_api_keys="sk-bench-1,sk-bench-2", shutdown_grace="2s",
            log_level="ERROR", **overrides,
        )  # fmt: skip
        container = Container(settings=settings)
        stopping = asyncio.Event()
        serving = asyncio.create_task(serve(container, stopping))
        async with asyncio.timeout(60):
            while not container.grpc_server().serving:
                if serving.done():
                    serving.result()
                await asyncio.sleep(0.01)
        ready.put((container.grpc_server().port, container.ops_server().port))
        await asyncio.to_thread(stop.wait, CHILD_LIMIT_S)
        stopping.set()
        await asyncio.wait_for(serving, 60)

    try:
        asyncio.run(main())
    except BaseException as error:
        ready.put(f"proxy failed: {type(error).__name__}: {error}")
        raise


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] if ordered else float("nan")


def scrape(port: int, names: tuple[str, ...]) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    found: dict[str, float] = {}
    for line in text.splitlines():
        match = re.match(r"^(\w+)(\{[^}]*\})? (\S+)$", line)
        if match and match.group(1) in names:
            key = match.group(1) + (match.group(2) or "")
            found[key] = found.get(key, 0.0) + float(match.group(3))
    return found


async def load(port: int, rate: int, seconds: float, share: float, first: int) -> dict[str, Any]:
    import grpc

    from adapters.inbound.grpc.generated import proxy_pb2 as pb
    from adapters.inbound.grpc.generated import proxy_pb2_grpc as pb_grpc

    misses: list[float] = []
    semantic: list[float] = []
    statuses: dict[str, int] = {}
    answered: list[tuple[float, int]] = []  # (when, number) of prompts answered, for paraphrases
    paraphrased = 0
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.enable_http_proxy", 0)]
    ) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        await asyncio.wait_for(channel.channel_ready(), 20)

        async def call(scheduled: float, prompt: str, number: int | None, para: bool) -> None:
            request = pb.InferenceRequest(model=MODEL, prompt=prompt, max_tokens=64)
            try:
                response = await stub.Infer(request, timeout=CALL_TIMEOUT_S)
            except grpc.aio.AioRpcError as error:
                statuses[error.code().name] = statuses.get(error.code().name, 0) + 1
                return
            ms = (time.perf_counter() - scheduled) * 1000
            status = pb.CacheStatus.Name(response.cache.status)
            statuses[status] = statuses.get(status, 0) + 1
            if para:
                if response.cache.status == pb.CACHE_STATUS_SEMANTIC:
                    semantic.append(ms)
            elif response.cache.status in (pb.CACHE_STATUS_MISS, pb.CACHE_STATUS_BYPASS):
                misses.append(ms)
                if number is not None:
                    answered.append((time.perf_counter(), number))

        tasks: list[asyncio.Task[None]] = []
        start = time.perf_counter() + 0.05
        total = int(rate * seconds)
        next_paraphrase = 0
        every = round(1 / share) if share else 0
        for n in range(total):
            scheduled = start + n / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            old = answered[next_paraphrase] if next_paraphrase < len(answered) else None
            if old and every and n % every == 0 and scheduled - old[0] >= 2.0:
                next_paraphrase += 1
                paraphrased += 1
                prompt, number, para = PARAPHRASE.format(i=old[1]), None, True
            else:
                prompt, number, para = STORED.format(i=first + n), first + n, False
            tasks.append(asyncio.create_task(call(scheduled, prompt, number, para)))
        await asyncio.gather(*tasks)
    return {"misses": misses, "semantic": semantic, "paraphrased": paraphrased,
            "statuses": statuses}  # fmt: skip


def run_config(
    label: str, tree: str, overrides: dict[str, Any], args: argparse.Namespace
) -> list[str]:
    ctx = multiprocessing.get_context("spawn")
    ready: Queue[Any] = ctx.Queue()
    stop = ctx.Event()
    child = ctx.Process(
        target=run_server, args=(tree, overrides, args.upstream, ready, stop), daemon=True
    )
    child.start()
    rows = []
    try:
        got = ready.get(timeout=120)
        if isinstance(got, str):
            raise SystemExit(got)
        port, ops = got
        names = ("cache_semantic_skips_total", "cache_errors_total")
        for number, rate in enumerate(args.rates):
            before = scrape(ops, names)
            result = asyncio.run(
                load(port, rate, args.seconds, args.paraphrases, (number + 1) * 10_000_000)
            )
            after = scrape(ops, names)
            counted = {k: after[k] - before.get(k, 0.0) for k in after if after[k] != before.get(k)}
            misses = result["misses"]
            hits = len(result["semantic"])
            para = result["paraphrased"]
            rows.append(
                f"{label:<20} {rate:>4}/s  miss p50 {percentile(misses, 50):7.2f}"
                f" ms  p99 {percentile(misses, 99):7.2f} ms  ({len(misses)} misses)  "
                f"semantic hits {hits}/{para}"
                + (f" ({100 * hits / para:.0f}%)" if para else "")
                + f"  statuses {result['statuses']}  counted {counted}"
            )
            print(rows[-1], flush=True)
    finally:
        stop.set()
        child.join(90)
        if child.is_alive():
            child.kill()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="100,200,400")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--paraphrases", type=float, default=0.1)
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--tree", default=str(ROOT), help="source tree of the proxy")
    parser.add_argument("--only", choices=("off", "embedded"), help="one configuration only")
    args = parser.parse_args()
    args.rates = [int(r) for r in args.rates.split(",")]
    if not 0 <= args.paraphrases < 1 or args.seconds > 60 or max(args.rates) > 2000:
        raise SystemExit("--paraphrases in [0, 1), --seconds at most 60, rates at most 2000/s")
    extra = dict(item.split("=", 1) for item in args.set)
    sys.path.insert(0, args.tree)
    with tempfile.TemporaryDirectory() as cache_dir, fixed_upstream() as upstream:
        args.upstream = upstream
        configs = [
            ("cache off", {"cache_mode": "off"}),
            ("cache on (embedded)", {"cache_mode": "embedded", "cache_dir": cache_dir}),
        ]
        for label, overrides in configs:
            if args.only and overrides["cache_mode"] != args.only:
                continue
            run_config(label, args.tree, {**overrides, **extra}, args)


if __name__ == "__main__":
    main()
