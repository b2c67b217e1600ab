"""Soak: steady mixed traffic against a proxy process for a while, watching its memory.

    .venv/bin/python benchmarks/soak.py [--duration 600] [--rate 50] [--stream-share 0.5]
        [--cache-mode off|embedded] [--sample-every 10] [--fault SPEC] [--proxy-env NAME=VALUE]

Starts the upstream simulator (`llm-proxy simulate`) and the proxy (`llm-proxy serve`, pointed at
the simulator) as two processes on loopback ephemeral ports, so the proxy's RSS is its own. Then
sends `--rate` requests per second (open loop, at most `--max-in-flight` at once), half unary
`Infer` and half `InferStream` by default, alternating OpenAI and Gemini models, every prompt
distinct (so nothing is coalesced or served from a cache). Every `--sample-every` seconds it
prints the proxy's RSS (VmRSS from /proc) and the request counts; at the end the least-squares
slope of RSS over time in MiB/min, over the whole run and over its second half (after warm-up),
and the errors by gRPC status. Bounded: `--duration` is at most one hour.

`--fault` gives the simulator a run-level fault spec (docs/simulator.md), e.g. `stall%1` for one
hang in a hundred requests; `--proxy-env` sets more proxy variables (`REQUEST_TIMEOUT=2s`).

With `--cache-mode embedded` every answer is stored (TTL `--cache-ttl`), so memory grows with the
cache until entries expire or `CACHE_MAX_ENTRIES` (`--proxy-env CACHE_MAX_ENTRIES=N`) evicts the
least recently used: each sample then also shows the answers in the response store, and the end
the vectors left in the index (read after the proxy stopped). A bound reached, then a flat RSS,
is what a bounded cache looks like.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import itertools
import os
import signal
import socket
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc

from adapters.inbound.grpc.generated import proxy_pb2 as pb
from adapters.inbound.grpc.generated import proxy_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("gpt-4o-mini", "gemini-2.0-flash")
MAX_DURATION_S = 3600.0
CALL_TIMEOUT_S = 10.0
STARTUP_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def slope_mib_per_min(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MiB) samples, in MiB per minute."""
    if len(samples) < 2:
        return float("nan")
    times, values = zip(*samples, strict=True)
    return statistics.linear_regression(times, values).slope * 60


async def wait_for_port(port: int, process: asyncio.subprocess.Process, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if process.returncode is not None or time.monotonic() > deadline:
                raise SystemExit(f"no listener on port {port}; see its log, {log}") from None
            await asyncio.sleep(0.1)
        else:
            writer.close()
            return


async def start(log: Path, *args: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    with log.open("wb") as sink:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cli", *args,
            cwd=ROOT, env={"PATH": os.environ["PATH"], **env},
            stdout=sink, stderr=sink,
        )  # fmt: skip


async def stop(process: asyncio.subprocess.Process) -> int | None:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(process.wait(), 30)
        except TimeoutError:
            process.kill()
            await process.wait()
    return process.returncode


def answers_in(cache_dir: Path) -> int | None:
    """Entries in the embedded response store (read-only, beside the proxy's own connection)."""
    path = cache_dir / "responses" / "responses.sqlite3"
    if not path.exists():
        return None
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            return int(db.execute("SELECT entries FROM totals").fetchone()[0])
    except sqlite3.Error:
        return None


def vectors_in(cache_dir: Path) -> int | None:
    """Points in the embedded vector index; only once the proxy has closed it."""
    from qdrant_edge import CountRequest, EdgeShard

    if not (cache_dir / "vectors").exists():
        return None
    shard = EdgeShard.load(str(cache_dir / "vectors"))
    try:
        return int(shard.count(CountRequest(exact=True)))
    finally:
        shard.close()


class Traffic:
    def __init__(self, stub: Any, stream_share: float) -> None:
        self.stub = stub
        self.stream_share = stream_share
        self.sent = 0
        self.ok = 0
        self.errors: collections.Counter[str] = collections.Counter()
        self.latencies: list[float] = []

    async def one(self, number: int) -> None:
        model = MODELS[number % 2]
        # distinct prompts: no coalescing, no cache hits; the stream share is spread evenly
        prompt = f"Soak request {number}: summarise topic {number * 7919 % 1_000_003} briefly."
        request = pb.InferenceRequest(model=model, prompt=prompt, max_tokens=64)
        streaming = (number * 0.618_033_988_75) % 1.0 < self.stream_share
        started = time.perf_counter()
        try:
            if streaming:
                chunks = [c async for c in self.stub.InferStream(request, timeout=CALL_TIMEOUT_S)]
                if not chunks or not chunks[-1].done:
                    self.errors["short stream"] += 1
                    return
            else:
                await self.stub.Infer(request, timeout=CALL_TIMEOUT_S)
        except grpc.aio.AioRpcError as error:
            self.errors[error.code().name] += 1
            return
        self.ok += 1
        self.latencies.append(time.perf_counter() - started)


async def drive(
    args: argparse.Namespace, traffic: Traffic, proxy_pid: int, cache_dir: Path
) -> list[tuple[float, float]]:
    loop = asyncio.get_running_loop()
    slots = asyncio.Semaphore(args.max_in_flight)
    tasks: set[asyncio.Task[None]] = set()
    samples: list[tuple[float, float]] = []
    began = loop.time()
    next_sample = began
    print(
        f"{'t(s)':>6} {'RSS MiB':>8} {'sent':>8} {'ok':>8} {'errors':>7} {'in flight':>9}"
        + (f" {'answers':>8}" if args.cache_mode == "embedded" else "")
    )

    async def guarded(number: int) -> None:
        try:
            await traffic.one(number)
        finally:
            slots.release()

    for number in itertools.count():
        now = loop.time()
        if now >= next_sample:
            rss = rss_mib(proxy_pid)
            samples.append((now - began, rss))
            errors = sum(traffic.errors.values())
            stored = answers_in(cache_dir) if args.cache_mode == "embedded" else None
            print(
                f"{now - began:6.0f} {rss:8.1f} {traffic.sent:8d} {traffic.ok:8d} "
                f"{errors:7d} {len(tasks):9d}" + ("" if stored is None else f" {stored:8d}"),
                flush=True,
            )
            next_sample += args.sample_every
        if now - began >= args.duration:
            break
        await asyncio.sleep(max(0.0, began + number / args.rate - loop.time()))
        await slots.acquire()
        traffic.sent += 1
        task = asyncio.create_task(guarded(number))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks, timeout=CALL_TIMEOUT_S + 5)
    samples.append((loop.time() - began, rss_mib(proxy_pid)))
    return samples


async def main(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="llm-proxy-soak-"))
    sim_port, grpc_port = free_port(), free_port()
    simulator = await start(
        workdir / "simulator.log", "simulate", "--port", str(sim_port),
        "--latency", args.upstream_latency, "--ttft", args.upstream_latency,
        "--chunk-delay", "5ms", *(["--fault", args.fault] if args.fault else []),
        env={},
    )  # fmt: skip
    proxy: asyncio.subprocess.Process | None = None
    try:
        await wait_for_port(sim_port, simulator, workdir / "simulator.log")
        base = f"http://127.0.0.1:{sim_port}"
        proxy = await start(
            workdir / "proxy.log", "serve",
            env={
                "GRPC_HOST": "127.0.0.1", "GRPC_PORT": str(grpc_port), "METRICS_PORT": "0",
                "HTTP_PORT": "0",
                "OPENAI_BASE_URL": f"{base}/v1", "GEMINI_BASE_URL": base,
                "OPENAI_API_KEYS": "sk-soak-1,sk-soak-2", "GEMINI_API_KEYS": "AIza-soak-1",
                "CACHE_MODE": args.cache_mode, "CACHE_DIR": str(workdir / "cache"),
                "CACHE_TTL": args.cache_ttl, "LOG_LEVEL": "WARNING", "WORKERS": "1",
                **dict(setting.split("=", 1) for setting in args.proxy_env),
            },
        )  # fmt: skip
        await wait_for_port(grpc_port, proxy, workdir / "proxy.log")
        print(
            f"proxy pid {proxy.pid} on 127.0.0.1:{grpc_port}, simulator on {base}; "
            f"{args.rate:g} req/s for {args.duration:g} s, {args.stream_share:.0%} streams, "
            f"cache {args.cache_mode}; logs in {workdir}",
            flush=True,
        )
        async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            traffic = Traffic(pb_grpc.InferenceServiceStub(channel), args.stream_share)
            samples = await drive(args, traffic, proxy.pid, workdir / "cache")
        half = [s for s in samples if s[0] >= samples[-1][0] / 2]
        print()
        print(
            f"requests sent {traffic.sent}, ok {traffic.ok}, errors {sum(traffic.errors.values())}"
            + (f" ({dict(traffic.errors)})" if traffic.errors else "")
        )
        if traffic.latencies:
            q = statistics.quantiles(traffic.latencies, n=100)
            print(f"latency p50 {q[49] * 1000:.0f} ms, p99 {q[98] * 1000:.0f} ms")
        print(
            f"RSS first {samples[0][1]:.1f} MiB, last {samples[-1][1]:.1f} MiB, "
            f"max {max(v for _, v in samples):.1f} MiB"
        )
        print(
            f"RSS slope {slope_mib_per_min(samples):+.3f} MiB/min over the whole run, "
            f"{slope_mib_per_min(half):+.3f} MiB/min over the second half"
        )
        code = await stop(proxy)
        print(f"proxy exit status {code}")
        if args.cache_mode == "embedded":
            cache = workdir / "cache"
            print(f"cache at the end: {answers_in(cache)} answers, {vectors_in(cache)} vectors")
        return 0 if code == 0 else 1
    finally:
        if proxy is not None:
            await stop(proxy)
        await stop(simulator)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds (max 3600)")
    parser.add_argument("--rate", type=float, default=50.0, help="requests per second")
    parser.add_argument("--stream-share", type=float, default=0.5, help="share of InferStream")
    parser.add_argument("--max-in-flight", type=int, default=200)
    parser.add_argument("--sample-every", type=float, default=10.0, help="seconds")
    parser.add_argument("--upstream-latency", default="50ms", help="simulator latency and TTFT")
    parser.add_argument("--cache-mode", choices=("off", "embedded"), default="off")
    parser.add_argument("--cache-ttl", default="5m")
    parser.add_argument(
        "--fault", default="", help="simulator run-level fault spec, e.g. 'stall%%1,503%%2'"
    )
    parser.add_argument(
        "--proxy-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra proxy setting (repeat), e.g. REQUEST_TIMEOUT=2s",
    )
    args = parser.parse_args()
    if not 0 < args.duration <= MAX_DURATION_S:
        parser.error(f"--duration must be in (0, {MAX_DURATION_S:g}]")
    if not 0 < args.rate <= 500:
        parser.error("--rate must be in (0, 500]")
    if not 0 <= args.stream_share <= 1:
        parser.error("--stream-share must be in [0, 1]")
    if any("=" not in setting for setting in args.proxy_env):
        parser.error("--proxy-env takes NAME=VALUE")
    return args


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(asyncio.run(main(parse_args())))
