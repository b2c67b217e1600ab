"""Pass-through throughput of `llm-proxy serve` with WORKERS=1 against WORKERS=2 (and more).

    .venv/bin/python benchmarks/workers_scaling.py [--workers 1,2] [--seconds 10]
        [--concurrency 64] [--connections 8] [--rounds 2]

A fixed-reply OpenAI-compatible upstream (benchmarks/fixed_upstream.py, its own process)
and `llm-proxy serve` (CACHE_MODE=off, a subprocess, so the supervisor and its workers are the
real ones) run on loopback; the client keeps `--concurrency` `Infer` calls in flight over
`--connections` gRPC connections (the kernel spreads connections, not calls, over the workers),
a distinct prompt per call, for `--seconds` after a 2 s warm-up. It prints calls/s, the proxy's
CPU per call (supervisor and workers, from /proc) and the ratio to one worker. Client, upstream
and proxy share this machine's cores: on 2 cores, the ratio shows what a second worker buys when
the other core is also busy with load generation, not the ceiling of a dedicated machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from fixed_upstream import fixed_upstream  # noqa: E402


def cpu_seconds(pids: list[int]) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return total


async def load(port: int, seconds: float, concurrency: int, connections: int) -> int:
    import grpc

    from adapters.inbound.grpc.generated import proxy_pb2 as pb
    from adapters.inbound.grpc.generated import proxy_pb2_grpc as pb_grpc

    channels = [
        grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
        )
        for _ in range(connections)
    ]
    stubs = [pb_grpc.InferenceServiceStub(c) for c in channels]
    done = 0
    counter = iter(range(10**9))
    stop_at = time.perf_counter() + seconds

    async def worker(n: int) -> None:
        nonlocal done
        stub = stubs[n % connections]
        while time.perf_counter() < stop_at:
            i = next(counter)
            request = pb.InferenceRequest(model="gpt-4o", prompt=f"distinct prompt {i}")
            await stub.Infer(request, timeout=30)
            done += 1

    try:
        await asyncio.gather(*(worker(n) for n in range(concurrency)))
    finally:
        for channel in channels:
            await channel.close()
    return done


def measure(workers: int, upstream_url: str, args: argparse.Namespace) -> tuple[float, float]:
    env = {
        "PATH": os.environ["PATH"], "WORKERS": str(workers), "CACHE_MODE": "off",
        "GRPC_PORT": "0", "METRICS_PORT": "0", "OPENAI_API_KEYS": "sk-bench-1",
        "OPENAI_BASE_URL": upstream_url, "LOG_LEVEL": "INFO", "LOG_FORMAT": "text",
        "MAX_CONCURRENT_REQUESTS": "0",
    }  # fmt: skip
    log = tempfile.NamedTemporaryFile(prefix="llm-proxy-workers-", suffix=".log")  # noqa: SIM115
    # the log goes to a file: a pipe nobody reads would fill and stall the proxy
    proxy = subprocess.Popen([sys.executable, "-m", "cli", "serve"], cwd=ROOT, env=env, stderr=log)
    try:
        seen = ""
        deadline = time.monotonic() + 60
        while seen.count("serving inferenceproxy") < workers and time.monotonic() < deadline:
            time.sleep(0.1)
            seen = Path(log.name).read_text()
        found = re.search(r"GRPC_PORT=(\d+)", seen) or re.search(r"on 127\.0\.0\.1:(\d+)", seen)
        if not found:
            raise SystemExit(f"proxy did not start:\n{seen}")
        port = int(found.group(1))
        pids = [proxy.pid]
        if workers > 1:
            listed = re.search(r"pids ([\d, ]+)", seen)
            pids += [int(pid) for pid in re.findall(r"\d+", listed.group(1) if listed else "")]
        asyncio.run(load(port, 2.0, args.concurrency, args.connections))  # warm-up
        cpu0, t0 = cpu_seconds(pids), time.perf_counter()
        calls = asyncio.run(load(port, args.seconds, args.concurrency, args.connections))
        elapsed, cpu = time.perf_counter() - t0, cpu_seconds(pids) - cpu0
        return calls / elapsed, 1000 * cpu / calls
    finally:
        proxy.send_signal(signal.SIGTERM)
        try:
            proxy.wait(30)
        except subprocess.TimeoutExpired:
            proxy.kill()
        log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if args.seconds > 60 or args.rounds > 5:
        raise SystemExit("--seconds at most 60, --rounds at most 5")
    counts = [int(w) for w in args.workers.split(",")]
    with fixed_upstream() as url:
        for round_ in range(1, args.rounds + 1):
            base = None
            for workers in counts:
                rate, cpu_ms = measure(workers, url, args)
                base = base or rate
                print(
                    f"round {round_}  WORKERS={workers}  {rate:8.1f} calls/s  "
                    f"{cpu_ms:5.2f} ms proxy CPU/call  x{rate / base:.2f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
