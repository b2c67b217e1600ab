"""What tracing costs: unary requests per second through the proxy (cache off, an upstream
simulator answering at once) with tracing off, with tracing on and a no-op exporter, and with
tracing on exporting over OTLP (gRPC, and http/protobuf) to a local collector stand-in
(benchmarks/otlp_sink.py).

    .venv/bin/python benchmarks/tracing_cost.py [--requests 1000] [--concurrency 16]
        [--rounds 5] [--max-seconds 15] [--before DIR]

`--before DIR` also runs the proxy from another source tree (e.g. `git archive main | tar -x -C
DIR`) in the same rounds, so a change is measured against what it replaces on the same machine
at the same time (configurations that tree cannot run are skipped).

The proxy (built by the real container, started by `serve()`), the simulator and the sink each
run in their own child process, so none shares the client's event loop. The configurations are
interleaved over `--rounds` rounds, a fresh proxy each time; req/s is the median over rounds
(with the range), latencies are pooled over rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import multiprocessing.synchronize
import os
import queue
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.context import SpawnContext, SpawnProcess
from multiprocessing.queues import Queue
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import grpc
import otlp_sink
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

# The proxy's own modules are imported inside the child processes, from the tree each runs.
HERE = str(Path(__file__).resolve().parents[1])
MODEL = "gpt-4o"
CONFIGS = ("off", "noop", "otlp", "otlp-http")
LABELS = {
    "off": "tracing off",
    "noop": "tracing on, no-op exporter",
    "otlp": "tracing on, OTLP/gRPC to sink",
    "otlp-http": "tracing on, OTLP/HTTP to sink",
}
CHILD_LIMIT_S = 600.0  # no child outlives this, whatever happens to the parent


class DroppingExporter(SpanExporter):
    """Takes every batch and keeps nothing but a count."""

    def __init__(self, counter: Synchronized[int]) -> None:
        self._counter = counter

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self._counter.get_lock():
            self._counter.value += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


async def _wait_event(stop: multiprocessing.synchronize.Event, limit: float) -> None:
    await asyncio.to_thread(stop.wait, limit)


def run_simulator(ready: Queue[str], stop: multiprocessing.synchronize.Event) -> None:
    from simulator import SimulatorConfig, running_simulator

    async def main() -> None:
        async with running_simulator(SimulatorConfig()) as sim:  # zero latency
            ready.put(sim.base_url)
            await _wait_event(stop, CHILD_LIMIT_S)

    asyncio.run(main())


def run_proxy(
    tree: str,
    config: str,
    sim_base_url: str,
    sink_ports: tuple[int, int],
    ready: Queue[Any],
    stop: multiprocessing.synchronize.Event,
    dropped: Synchronized[int],
) -> None:
    sys.path.insert(0, tree)  # before the first import of the proxy's modules in this process
    from dependency_injector import providers
    from opentelemetry.sdk.trace import TracerProvider

    from adapters.outbound.observability import tracing as tracing_module
    from adapters.process.settings import load_settings
    from container import Container

    try:
        from cli import serve
    except ImportError:  # a tree from before cli.py
        from container import serve  # type: ignore[attr-defined,no-redef]

    for name in [n for n in os.environ if n.startswith("OTEL_")]:
        del os.environ[name]
    if config in ("otlp", "otlp-http"):
        grpc_port, http_port = sink_ports
        port = grpc_port if config == "otlp" else http_port
        os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{port}"
        os.environ["OTEL_EXPORTER_OTLP_PROTOCOL"] = "grpc" if config == "otlp" else "http/protobuf"

    async def main() -> None:
        settings = load_settings(
            grpc_host="127.0.0.1",
            grpc_port=0,
            http_port=0,
            metrics_port=0,
            cache_mode="off",
            openai_base_url=f"{sim_base_url}/v1",
            gemini_base_url=sim_base_url,
            openai_api_keys="sk-bench-1,sk-bench-2",
            gemini_api_keys="AIza-bench-1",
            shutdown_grace="2s",
            log_level="WARNING",
        )
        container = Container(settings=settings)
        if config == "noop":
            exporter = DroppingExporter(dropped)
            if hasattr(tracing_module, "build_tracer_provider"):
                provider = tracing_module.build_tracer_provider("llm-proxy", exporter)
            else:  # the tree before the contrib instrumentation
                provider = tracing_module.setup_tracing("llm-proxy", True, exporter=exporter)
            container.tracer_provider.override(providers.Object(provider))
        stopping = asyncio.Event()
        serving = asyncio.create_task(serve(container, stopping))
        server = container.grpc_server()
        async with asyncio.timeout(60):
            while not server.serving:
                if serving.done():
                    serving.result()  # startup failed: raise its error
                await asyncio.sleep(0.01)
        tracing = "sdk" if isinstance(container.tracer_provider(), TracerProvider) else "none"
        ready.put((server.port, tracing))
        cpu_started = time.process_time()
        await _wait_event(stop, CHILD_LIMIT_S)
        stopping.set()
        await asyncio.wait_for(serving, 60)  # shuts the tracer provider down: flushes spans
        # CPU the proxy spent on the calls (and on exporting their spans): unlike req/s, other
        # processes on the machine hardly move it
        ready.put(("cpu", time.process_time() - cpu_started))

    try:
        asyncio.run(main())
    except BaseException as error:
        ready.put(f"proxy failed: {type(error).__name__}: {error}")
        raise


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


@dataclass
class Result:
    rates: list[float] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    calls: int = 0
    warmup_calls: int = 0
    errors: int = 0
    spans: int = 0
    cpu_s: float = 0.0


async def drive(
    port: int, requests: int, concurrency: int, warmup: int, max_seconds: float, result: Result
) -> None:
    from adapters.inbound.grpc.generated import proxy_pb2 as pb
    from adapters.inbound.grpc.generated import proxy_pb2_grpc as pb_grpc

    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.enable_http_proxy", 0)]
    ) as channel:
        await asyncio.wait_for(channel.channel_ready(), 20)
        stub = pb_grpc.InferenceServiceStub(channel)
        for i in range(warmup):
            await stub.Infer(pb.InferenceRequest(model=MODEL, prompt=f"warm-up {i}"), timeout=10)
        result.warmup_calls += warmup

        calls = iter(range(requests))
        deadline = time.monotonic() + max_seconds
        done = 0

        async def worker() -> None:
            nonlocal done
            for i in calls:
                if time.monotonic() > deadline:
                    return
                started = time.perf_counter()
                try:
                    await stub.Infer(pb.InferenceRequest(model=MODEL, prompt=f"q {i}"), timeout=10)
                except grpc.aio.AioRpcError:
                    result.errors += 1
                else:
                    result.latencies_ms.append((time.perf_counter() - started) * 1000)
                done += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        result.rates.append(done / elapsed)
        result.calls += done


def start(ctx: SpawnContext, target: Any, *args: Any) -> SpawnProcess:
    process = ctx.Process(target=target, args=args, daemon=True)
    process.start()
    return process


def ready_value(process: SpawnProcess, ready: Queue[Any], what: str, timeout: float = 90) -> Any:
    try:
        value = ready.get(timeout=timeout)
    except queue.Empty:
        raise SystemExit(f"{what} did not start (exit code {process.exitcode})") from None
    if isinstance(value, str) and value.startswith("proxy failed"):
        raise SystemExit(value)
    return value


def stop_child(process: SpawnProcess, stop: multiprocessing.synchronize.Event) -> None:
    stop.set()
    process.join(60)
    if process.is_alive():
        process.terminate()
        process.join(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000, help="calls per run")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=100, help="sequential calls first")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-seconds", type=float, default=15.0, help="time bound per run")
    parser.add_argument("--before", help="another source tree to measure in the same rounds")
    args = parser.parse_args()
    trees = {"after": HERE}
    if args.before:
        trees = {"before": str(Path(args.before).resolve()), "after": HERE}
    runs = [
        (name, config)
        for name in trees
        for config in CONFIGS
        # http/protobuf crashed the proxy before this change: nothing to measure
        if not (name == "before" and config == "otlp-http")
    ]

    ctx = multiprocessing.get_context("spawn")
    sim_ready: Queue[str] = ctx.Queue()
    sim_stop = ctx.Event()
    sim = start(ctx, run_simulator, sim_ready, sim_stop)
    sink_ready: Queue[tuple[int, int]] = ctx.Queue()
    sink_stop = ctx.Event()
    sink_spans, sink_requests = ctx.Value("q", 0), ctx.Value("q", 0)
    sink = start(
        ctx, otlp_sink.run_in_child, sink_ready, sink_stop, sink_spans, sink_requests, CHILD_LIMIT_S
    )
    results = {run: Result() for run in runs}
    began = time.monotonic()
    try:
        sim_url = ready_value(sim, sim_ready, "simulator")
        sink_ports = ready_value(sink, sink_ready, "OTLP sink")
        print(
            f"{args.rounds} rounds x {len(runs)} configurations, each {args.requests} unary "
            f"calls at concurrency {args.concurrency} (bound {args.max_seconds:.0f}s) after "
            f"{args.warmup} warm-up calls; cache off; simulator with zero latency",
            flush=True,
        )
        for round_no in range(1, args.rounds + 1):
            for tree, config in runs:
                result = results[(tree, config)]
                ready: Queue[Any] = ctx.Queue()
                stop = ctx.Event()
                dropped = ctx.Value("q", 0)
                spans_before = sink_spans.value
                proxy = start(
                    ctx,
                    run_proxy,
                    trees[tree],
                    config,
                    sim_url,
                    sink_ports,
                    ready,
                    stop,
                    dropped,
                )
                try:
                    port, tracing = ready_value(proxy, ready, "proxy")
                    expected = "none" if config == "off" else "sdk"
                    if tracing != expected:
                        raise SystemExit(f"{config}: tracer provider is {tracing}, not {expected}")
                    asyncio.run(
                        drive(
                            port,
                            args.requests,
                            args.concurrency,
                            args.warmup,
                            args.max_seconds,
                            result,
                        )
                    )
                finally:
                    stop_child(proxy, stop)
                try:
                    kind, cpu = ready.get(timeout=10)
                    result.cpu_s += cpu if kind == "cpu" else 0.0
                except queue.Empty:
                    pass
                if config == "noop":
                    result.spans += dropped.value
                else:
                    time.sleep(0.2)  # the sink publishes its counters every 50 ms
                    result.spans += sink_spans.value - spans_before
                print(
                    f"  round {round_no}: {tree:<6} {LABELS[config]:<31} "
                    f"{result.rates[-1]:7.0f} req/s",
                    flush=True,
                )
    finally:
        stop_child(sim, sim_stop)
        stop_child(sink, sink_stop)

    print()
    for tree, config in runs:
        r = results[(tree, config)]
        ms = r.latencies_ms
        per_call = r.spans / (r.calls + r.warmup_calls)
        spans = {
            "off": "no spans (no SDK installed)",
            "noop": f"{r.spans} spans to the no-op exporter ({per_call:.2f} per call)",
        }.get(config, f"{r.spans} spans received by the sink ({per_call:.2f} per call)")
        print(
            f"{tree:<6} {LABELS[config]:<31} {statistics.median(r.rates):4.0f} req/s (median of "
            f"{len(r.rates)}, range {min(r.rates):.0f}-{max(r.rates):.0f}); "
            f"latency median {statistics.median(ms):.1f} ms, p99 {percentile(ms, 99):.1f} ms; "
            f"proxy CPU {1000 * r.cpu_s / (r.calls + r.warmup_calls):.2f} ms a call"
        )
        print(f"       {r.calls} calls, {r.errors} errors; {spans}")
    for tree in trees:
        base = statistics.median(results[(tree, "off")].rates)
        for tree_, config in runs:
            if tree_ == tree and config != "off":
                rate = statistics.median(results[(tree, config)].rates)
                print(
                    f"{tree}: {LABELS[config]}: {100 * (base - rate) / base:.1f}% fewer req/s "
                    "than tracing off"
                )
    print(f"(total {time.monotonic() - began:.0f}s)")


if __name__ == "__main__":
    main()
