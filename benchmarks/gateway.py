"""The proxy per core against a near-free upstream, with a distinct prompt per request.

    .venv/bin/python benchmarks/gateway.py [--seconds 5] [--rates 200,400] [--clients 2]
        [--concurrency 32] [--proxy-core 0] [--other-core 1] [--upstream fixed|simulator]
        [--skip-rate 100] [--skip-seconds 10]

`make bench` runs it with the defaults. Every loop is bounded by time (and the whole run by
`--seconds`); everything binds 127.0.0.1 on ephemeral ports.

- The upstream is the fixed-reply OpenAI-compatible HTTP/1.1 server of fixed_upstream.py (raw
  asyncio, uvloop when installed) on the other core: it answers `POST .../chat/completions`
  with one JSON body, or with one SSE body when the request asks for a stream.
  `--upstream simulator` puts the project's simulator there instead, to see how far it is from
  free.
- The proxy is `llm-proxy serve`, pinned to one core (`taskset -c`), request logs on (JSON to a
  file), metrics on. First `CACHE_MODE=off` (pass-through), then `CACHE_MODE=embedded`: first
  `--skip-rate` distinct prompts a second for `--skip-seconds` (the share of lookups that skip
  the semantic tier, `cache_semantic_skips_total{reason="embedder_busy"}` over
  `cache_lookups_total` from its /metrics), then the same loads as pass-through, every request a
  miss (the cache-on/cache-off ratio of req/s and of per-core capacity), then a cache pre-warmed
  with `--hit-prompts` prompts, whose requests are all exact hits.
- The load comes from `--clients` processes on the other core. Every request carries a prompt
  never sent before (identical requests are coalesced and cached: a repeated body measures the
  cache, not the pass-through).
- Closed loop (`--concurrency` in flight per client) for the most requests per second, and the
  proxy's CPU per request from /proc/<pid>/stat (utime + stime over the same window). When the
  proxy's CPU use is below ~95 % of its core, something else (the clients) bounded the figure:
  1000 / (CPU ms per request) is then what the core would serve.
- Open loop at each of `--rates` req/s for latency p50/p99 measured from each request's
  SCHEDULED send time (a slow answer does not delay the next send: no coordinated omission).
- The same closed and open loops straight to the upstream (HTTP, aiohttp) are the floor; the
  streaming time to the first content (proxy vs direct), RSS, and the ratios proxy/direct.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fixed_upstream import MODEL, run_fixed_upstream  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


# --- load generators (one process each) ---------------------------------------------------------


@dataclass
class Load:
    target: str  # "grpc" or "http"
    address: str  # host:port (gRPC) or http://host:port/v1/chat/completions
    mode: str  # "closed", "open" or "ttfb"
    start: float  # wall-clock time.time() at which to begin
    seconds: float
    concurrency: int = 32
    rate: float = 0.0  # requests per second (open loop, this process)
    prompts: list[str] = field(default_factory=list)  # fixed prompts to cycle; else distinct
    tag: str = ""


def _prompt_source(load: Load) -> Callable[[int], str]:
    if load.prompts:
        return lambda i: load.prompts[i % len(load.prompts)]
    tag = f"{load.tag}-{os.getpid()}-{time.time_ns()}"
    return lambda i: f"Question {tag}-{i}: what is the answer?"


def run_load(load: Load, other_core: int, results: Any) -> None:
    os.sched_setaffinity(0, {other_core})
    with suppress(ImportError):
        import uvloop

        uvloop.install()
    results.put(asyncio.run(_load(load)))


async def _load(load: Load) -> dict[str, Any]:
    prompt = _prompt_source(load)
    if load.target == "grpc":
        import grpc

        from adapters.inbound.grpc.generated import proxy_pb2 as pb
        from adapters.inbound.grpc.generated import proxy_pb2_grpc as pb_grpc

        channel = grpc.aio.insecure_channel(load.address)
        await asyncio.wait_for(channel.channel_ready(), 60)
        stub = pb_grpc.InferenceServiceStub(channel)

        async def unary(i: int) -> str:
            reply = await stub.Infer(pb.InferenceRequest(model=MODEL, prompt=prompt(i)))
            return pb.CacheStatus.Name(reply.cache.status)

        async def first_content(i: int) -> float:
            started = time.perf_counter()
            first = 0.0
            async for chunk in stub.InferStream(pb.InferenceRequest(model=MODEL, prompt=prompt(i))):
                if chunk.content and not first:
                    first = time.perf_counter() - started
            return first

        close: Callable[[], Any] = channel.close
    else:
        import aiohttp

        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            cookie_jar=aiohttp.DummyCookieJar(),
            headers={"authorization": "Bearer sk-bench"},  # the simulator wants a key
        )

        async def unary(i: int) -> str:
            body = {"model": MODEL, "messages": [{"role": "user", "content": prompt(i)}]}
            async with session.post(load.address, json=body) as response:
                await response.read()
                return str(response.status)

        async def first_content(i: int) -> float:
            body = {
                "model": MODEL,
                "stream": True,
                "messages": [{"role": "user", "content": prompt(i)}],
            }
            started = time.perf_counter()
            first = 0.0
            async with session.post(load.address, json=body) as response:
                async for line in response.content:
                    if line.startswith(b"data: {") and b'"content"' in line and not first:
                        first = time.perf_counter() - started
            return first

        close = session.close

    try:
        for i in range(20):  # connections up, code paths warm
            await unary(10**9 + i)  # never one of the measured prompts
        await asyncio.sleep(max(0.0, load.start - time.time()))
        if load.mode == "closed":
            return await _closed(load, unary)
        if load.mode == "open":
            return await _open(load, unary)
        return await _ttfb(load, first_content)
    finally:
        await close()


async def _closed(load: Load, unary: Callable[[int], Any]) -> dict[str, Any]:
    end = time.perf_counter() + load.seconds
    statuses: Counter[str] = Counter()
    counter = iter(range(10**9))

    async def worker() -> None:
        while time.perf_counter() < end:
            try:
                status = await unary(next(counter))
            except Exception as error:  # counted, never fatal: the figure must say it
                status = f"error {type(error).__name__}"
            if time.perf_counter() <= end:
                statuses[status] += 1

    await asyncio.gather(*(worker() for _ in range(load.concurrency)))
    return {"statuses": statuses}


async def _open(load: Load, unary: Callable[[int], Any]) -> dict[str, Any]:
    """Sends on a fixed schedule; latency counts from the scheduled time."""
    count = int(load.rate * load.seconds)
    begin = time.perf_counter()
    latencies: list[float] = []
    statuses: Counter[str] = Counter()

    async def one(i: int, scheduled: float) -> None:
        try:
            statuses[await unary(i)] += 1
        except Exception as error:
            statuses[f"error {type(error).__name__}"] += 1
        latencies.append(time.perf_counter() - scheduled)

    tasks = []
    for i in range(count):
        scheduled = begin + i / load.rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, scheduled)))
    await asyncio.wait(tasks, timeout=load.seconds + 10)
    return {"statuses": statuses, "latencies": latencies, "late": count - len(latencies)}


async def _ttfb(load: Load, first_content: Callable[[int], Any]) -> dict[str, Any]:
    end = time.perf_counter() + load.seconds
    ttfb: list[float] = []
    i = 0
    while time.perf_counter() < end and i < 2000:
        ttfb.append(await first_content(i))
        i += 1
    return {"ttfb": ttfb}


# --- orchestration ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, process: Any, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        alive = process.poll() is None if hasattr(process, "poll") else process.is_alive()
        if not alive:
            raise SystemExit(f"the process for port {port} exited")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit(f"nothing listens on {port} after {seconds} s")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime (fields 14, 15)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def scrape(port: int) -> dict[str, float]:
    """The proxy's /metrics: `name{labels}` -> value."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    found: dict[str, float] = {}
    for line in text.splitlines():
        if match := re.match(r"^(\w+(?:\{[^}]*\})?) (\S+)$", line):
            found[match.group(1)] = float(match.group(2))
    return found


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] if ordered else float("nan")


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.spawn = multiprocessing.get_context("spawn")

    def drive(self, template: Load, clients: int, pid: int | None) -> dict[str, Any]:
        """Runs `clients` load processes from a common start; the proxy's CPU over the window."""
        results = self.spawn.Queue()
        start = time.time() + 3.0  # room for the clients to start, connect and warm up
        procs = []
        for n in range(clients):
            load = Load(**{**template.__dict__, "start": start, "tag": f"{template.tag}{n}"})
            proc = self.spawn.Process(target=run_load, args=(load, self.args.other_core, results))
            proc.start()
            procs.append(proc)
        time.sleep(max(0.0, start - time.time()))
        cpu0 = cpu_seconds(pid) if pid else 0.0
        merged: dict[str, Any] = {"statuses": Counter(), "latencies": [], "ttfb": [], "late": 0}
        if template.mode == "closed":  # the clients count what completes inside this window
            time.sleep(template.seconds)
            merged["cpu"] = cpu_seconds(pid) - cpu0 if pid else 0.0
            merged["wall"] = template.seconds
        for _ in procs:
            part = results.get(timeout=template.seconds + 60)
            merged["statuses"].update(part.get("statuses", {}))
            merged["latencies"] += part.get("latencies", [])
            merged["ttfb"] += part.get("ttfb", [])
            merged["late"] += part.get("late", 0)
        for proc in procs:
            proc.join(30)
        return merged

    def measure(self, label: str, target: str, address: str, pid: int | None) -> dict[str, Any]:
        a = self.args
        row: dict[str, Any] = {"label": label}
        base = Load(target, address, "closed", 0.0, a.seconds, a.concurrency, tag=label)
        if label == "exact hit":
            base.prompts = self.hit_prompts
        closed = self.drive(base, a.clients, pid)
        time.sleep(1.0)  # the last closed-loop calls drain before the next phase
        done = sum(n for s, n in closed["statuses"].items() if not s.startswith("error"))
        row["rps"] = done / a.seconds
        row["statuses"] = dict(closed["statuses"])
        if pid:
            row["cpu_ms"] = closed["cpu"] / max(done, 1) * 1000
            row["cpu_use"] = closed["cpu"] / closed["wall"]
        for rate in a.rates:
            load = Load(
                target,
                address,
                "open",
                0.0,
                a.open_seconds,
                rate=rate / a.clients,
                prompts=base.prompts,
                tag=label,
            )
            opened = self.drive(load, a.clients, pid)
            lat = [x * 1000 for x in opened["latencies"]]
            errors = sum(n for s, n in opened["statuses"].items() if s.startswith("error"))
            row[rate] = (pct(lat, 50), pct(lat, 99), errors + opened["late"])
        if label != "exact hit":
            ttfb = self.drive(Load(target, address, "ttfb", 0.0, a.open_seconds, tag=label), 1, pid)
            row["ttfb"] = (
                pct([x * 1000 for x in ttfb["ttfb"]], 50),
                pct([x * 1000 for x in ttfb["ttfb"]], 99),
            )
        if pid:
            row["rss"] = rss_mib(pid)
        return row

    def start_proxy(self, upstream: int, workdir: Path, cache_mode: str) -> tuple[Any, int]:
        port = free_port()
        self.metrics_port = free_port()
        env = {
            **os.environ,
            "GRPC_HOST": "127.0.0.1",
            "GRPC_PORT": str(port),
            "METRICS_PORT": str(self.metrics_port),
            "HTTP_PORT": "0",  # gRPC only (8080 may be taken)
            "OPENAI_API_KEYS": "sk-bench",
            "OPENAI_BASE_URL": f"http://127.0.0.1:{upstream}/v1",
            "CACHE_MODE": cache_mode,
            "CACHE_DIR": str(workdir / "cache"),
            "LOG_FORMAT": "json",
        }
        log = (workdir / f"proxy-{cache_mode}.log").open("w")
        command = ["taskset", "-c", str(self.args.proxy_core), str(ROOT / ".venv/bin/llm-proxy"),
                   "serve"]  # fmt: skip
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=log, cwd=workdir)
        wait_listening(port, proc)
        return proc, port

    def run(self) -> None:
        a = self.args
        print(f"load average at start: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}; "
              f"cores: proxy {a.proxy_core}, upstream and {a.clients} client processes "
              f"{a.other_core}; {a.seconds:.0f} s closed loop ({a.concurrency} in flight per "
              f"client), {a.open_seconds:.0f} s per open-loop rate")  # fmt: skip
        workdir = Path(tempfile.mkdtemp(prefix="llm-proxy-bench-"))
        upstream_port = free_port()
        if a.upstream == "fixed":
            upstream = self.spawn.Process(target=run_fixed_upstream, args=(upstream_port,))
            upstream.start()
            os.sched_setaffinity(upstream.pid, {a.other_core})
        else:
            upstream = subprocess.Popen(
                [
                    "taskset",
                    "-c",
                    str(a.other_core),
                    str(ROOT / ".venv/bin/llm-proxy"),
                    "simulate",
                    "--port",
                    str(upstream_port),
                    "--latency",
                    "0",
                    "--ttft",
                    "0",
                    "--chunk-delay",
                    "0",
                    "--jitter",
                    "0",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        rows = []
        try:
            wait_listening(upstream_port, upstream)
            url = f"http://127.0.0.1:{upstream_port}/v1/chat/completions"
            rows.append(self.measure("direct", "http", url, None))
            self.report(rows)
            proxy, port = self.start_proxy(upstream_port, workdir, "off")
            try:
                rows.append(self.measure("pass-through", "grpc", f"127.0.0.1:{port}", proxy.pid))
            finally:
                proxy.terminate()
                proxy.wait(30)
            self.report(rows)
            proxy, port = self.start_proxy(upstream_port, workdir, "embedded")
            try:
                self.skips = self.skip_share(f"127.0.0.1:{port}", proxy.pid)
                rows.append(self.measure("cache miss", "grpc", f"127.0.0.1:{port}", proxy.pid))
                self.report(rows)
                self.warm_cache(f"127.0.0.1:{port}")
                rows.append(self.measure("exact hit", "grpc", f"127.0.0.1:{port}", proxy.pid))
            finally:
                proxy.terminate()
                proxy.wait(30)
            self.report(rows, final=True)
        finally:
            if isinstance(upstream, subprocess.Popen):
                upstream.terminate()
                upstream.wait(10)
            else:
                upstream.terminate()
                upstream.join(10)
            shutil.rmtree(workdir, ignore_errors=True)

    def skip_share(self, address: str, pid: int) -> dict[str, Any]:
        """`--skip-rate` distinct prompts a second (open loop) on a fresh embedded cache: how
        many lookups skipped the semantic tier, from the proxy's counters."""
        a = self.args
        names = ("cache_lookups_total", 'cache_semantic_skips_total{reason="embedder_busy"}',
                 "cache_index_backlog", 'cache_index_dropped_total{reason="full"}')  # fmt: skip
        before = scrape(self.metrics_port)
        cpu0 = cpu_seconds(pid)
        started = time.monotonic()
        load = Load("grpc", address, "open", 0.0, a.skip_seconds, rate=a.skip_rate / a.clients,
                    tag="skip")  # fmt: skip
        opened = self.drive(load, a.clients, pid)
        cpu = cpu_seconds(pid) - cpu0
        wall = time.monotonic() - started
        after = scrape(self.metrics_port)
        counted = {n: after.get(n, 0.0) - before.get(n, 0.0) for n in names}
        lat = [x * 1000 for x in opened["latencies"]]
        result = {"lookups": counted[names[0]], "busy": counted[names[1]],
                  "backlog": after.get(names[2], 0.0), "dropped": counted[names[3]],
                  "p50": pct(lat, 50), "p99": pct(lat, 99), "statuses": dict(opened["statuses"]),
                  "cpu_use": cpu / wall}  # fmt: skip
        print(f"\n{a.skip_rate} distinct prompts/s for {a.skip_seconds:.0f} s, embedded cache: "
              f"{result['busy']:.0f} of {result['lookups']:.0f} lookups skipped the semantic "
              f"tier; latency p50 {result['p50']:.2f} ms, p99 {result['p99']:.2f} ms; proxy CPU "
              f"~{result['cpu_use']:.0%} (warm-up included); index backlog after "
              f"{result['backlog']:.0f}; statuses {result['statuses']}")  # fmt: skip
        return result

    def warm_cache(self, address: str) -> None:
        """Stores `--hit-prompts` answers, then checks that asking again hits exactly."""
        self.hit_prompts = [
            f"Cached question {i}: what is the answer?" for i in range(self.args.hit_prompts)
        ]
        load = Load("grpc", address, "closed", 0.0, 4.0, 8, prompts=self.hit_prompts, tag="warm")
        self.drive(load, 1, None)
        time.sleep(1.0)  # stores finish in the background
        check = self.drive(load, 1, None)["statuses"]
        print(f"exact-hit cache warmed: {dict(check)}")

    def report(self, rows: list[dict[str, Any]], final: bool = False) -> None:
        rates = self.args.rates
        head = f"{'':14}{'req/s':>9}{'CPU ms/req':>11}{'CPU use':>9}"
        head += "".join(f"{f'p50/p99 ms @{r}/s':>22}" for r in rates)
        head += f"{'TTFB p50/p99 ms':>18}{'RSS MiB':>9}"
        print("\n" + head)
        for row in rows:
            line = f"{row['label']:14}{row['rps']:>9.0f}"
            line += (
                f"{row['cpu_ms']:>11.3f}{row['cpu_use']:>8.0%} " if "cpu_ms" in row else f"{'':20}"
            )
            for r in rates:
                p50, p99, bad = row[r]
                line += f"{f'{p50:.2f} / {p99:.2f}' + (f' ({bad} bad)' if bad else ''):>22}"
            ttfb = "{:.2f} / {:.2f}".format(*row["ttfb"]) if "ttfb" in row else ""
            line += f"{ttfb:>18}"
            line += f"{row['rss']:>9.0f}" if "rss" in row else ""
            print(line)
        for row in rows:
            expected = {"direct": "200", "pass-through": "CACHE_STATUS_BYPASS",
                        "cache miss": "CACHE_STATUS_MISS"}  # fmt: skip
            wanted = expected.get(row["label"], "CACHE_STATUS_EXACT")
            odd = {s: n for s, n in row["statuses"].items() if s != wanted}
            if odd:
                print(f"  {row['label']}: unexpected outcomes {odd}")
        if not final:
            return
        direct = rows[0]
        for row in rows[1:]:
            print(f"\n{row['label']} vs direct: req/s x{row['rps'] / direct['rps']:.2f}; "
                  f"per-core capacity from CPU: {1000 / row['cpu_ms']:.0f} req/s")  # fmt: skip
            for r in rates:
                (p50, p99, _), (d50, d99, _) = row[r], direct[r]
                print(f"  overhead @{r}/s: p50 {p50 - d50:+.2f} ms, p99 {p99 - d99:+.2f} ms "
                      f"(x{p50 / d50:.2f} / x{p99 / d99:.2f})")  # fmt: skip
            if "ttfb" in row:
                print(f"  stream TTFB overhead: p50 {row['ttfb'][0] - direct['ttfb'][0]:+.2f} ms, "
                      f"p99 {row['ttfb'][1] - direct['ttfb'][1]:+.2f} ms")  # fmt: skip
        by_label = {row["label"]: row for row in rows}
        off, on = by_label.get("pass-through"), by_label.get("cache miss")
        if off and on:
            print(f"\ncache on (embedded), every request a miss, vs cache off: req/s "
                  f"x{on['rps'] / off['rps']:.2f}, per-core capacity from CPU "
                  f"x{off['cpu_ms'] / on['cpu_ms']:.2f} (target >= 0.7)")  # fmt: skip
        skips = getattr(self, "skips", None)
        if skips and skips["lookups"]:
            print(f"semantic-tier skips at {self.args.skip_rate} distinct req/s on one core: "
                  f"{skips['busy'] / skips['lookups']:.1%} of {skips['lookups']:.0f} lookups "
                  f"(target <= 5%)")  # fmt: skip
        print(f"\nload average at end: {os.getloadavg()[0]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="closed-loop window")
    parser.add_argument("--open-seconds", type=float, default=5.0, help="per open-loop rate")
    parser.add_argument("--rates", default="200,400", help="open-loop rates, req/s")
    parser.add_argument("--clients", type=int, default=2, help="load processes")
    parser.add_argument("--concurrency", type=int, default=32, help="in flight per client")
    parser.add_argument("--hit-prompts", type=int, default=256)
    parser.add_argument("--skip-rate", type=int, default=100, help="distinct req/s, skip share")
    parser.add_argument("--skip-seconds", type=float, default=10.0)
    parser.add_argument("--proxy-core", type=int, default=0)
    parser.add_argument("--other-core", type=int, default=1)
    parser.add_argument("--upstream", choices=("fixed", "simulator"), default="fixed")
    args = parser.parse_args()
    args.rates = [int(r) for r in args.rates.split(",") if r]
    args.seconds = min(args.seconds, 60.0)
    args.open_seconds = min(args.open_seconds, 60.0)
    args.skip_seconds = min(args.skip_seconds, 60.0)
    Bench(args).run()


if __name__ == "__main__":
    main()
