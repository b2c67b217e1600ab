"""Fault matrix, the process and its backends: SIGTERM under load, a cache backend lost and back."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

import grpc
import httpx
import pytest

from adapters.inbound.grpc.generated import proxy_pb2 as pb
from adapters.inbound.grpc.generated import proxy_pb2_grpc as pb_grpc
from simulator import RunningSimulator, SimulatorConfig, running_simulator
from tests.containers import RedisServer, disposable_redis, free_port  # noqa: F401
from tests.faults.matrix import GEMINI, OPENAI, ask, collect, failure, metric, total
from tests.harness import GEMINI_KEYS, OPENAI_KEYS, remote_cache, scrape, stack

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


async def wait_ready(url: str, process: asyncio.subprocess.Process, log: Path) -> None:
    async with httpx.AsyncClient() as http, asyncio.timeout(30):
        while True:
            if process.returncode is not None:
                raise AssertionError(f"the proxy exited at startup; its log: {log}")
            try:
                if (await http.get(url)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.05)


async def serve_process(
    simulator: RunningSimulator, log: Path, **settings: object
) -> asyncio.subprocess.Process:
    """`llm-proxy serve` as its own process (one worker), its output in `log`."""
    env = {
        "PATH": os.environ["PATH"],
        "GRPC_HOST": "127.0.0.1",
        "HTTP_PORT": "0",
        "OPENAI_BASE_URL": simulator.openai_base_url,
        "GEMINI_BASE_URL": simulator.gemini_base_url,
        "OPENAI_API_KEYS": ",".join(OPENAI_KEYS),
        "GEMINI_API_KEYS": ",".join(GEMINI_KEYS),
        "CACHE_MODE": "off",
        "WORKERS": "1",
        **{name: str(value) for name, value in settings.items()},
    }
    with log.open("wb") as sink:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cli", "serve", cwd=ROOT, env=env, stdout=sink, stderr=sink
        )


async def test_sigterm_under_load_finishes_in_flight_calls_refuses_new_ones_and_exits_0(
    tmp_path: Path,
) -> None:
    sim = SimulatorConfig(unary_latency_s=1.0, ttft_s=0.2, chunk_delay_s=0.05)
    port, metrics_port = free_port(), free_port()
    log = tmp_path / "proxy.log"
    async with running_simulator(sim) as simulator:
        process = await serve_process(
            simulator, log, GRPC_PORT=port, METRICS_PORT=metrics_port, SHUTDOWN_GRACE="10s"
        )
        try:
            await wait_ready(f"http://127.0.0.1:{metrics_port}/readyz", process, log)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = pb_grpc.InferenceServiceStub(channel)
                unary = [
                    asyncio.ensure_future(stub.Infer(ask(f"Unary {i}.", (OPENAI, GEMINI)[i % 2])))
                    for i in range(20)
                ]
                streams: list[list[pb.StreamChunk]] = [[] for _ in range(10)]
                streaming = [
                    asyncio.ensure_future(collect(stub.InferStream(ask(f"Stream {i}.")), chunks))
                    for i, chunks in enumerate(streams)
                ]
                assert await simulator.stats.wait_until(lambda st: st.in_flight == 30, 10)
                process.send_signal(signal.SIGTERM)
                async with httpx.AsyncClient() as http:
                    for _ in range(200):  # draining: unready, and new calls are refused
                        if (
                            await http.get(f"http://127.0.0.1:{metrics_port}/readyz")
                        ).status_code == 503:
                            break
                        await asyncio.sleep(0.01)
                refused = await failure(stub.Infer(ask("Too late."), timeout=3))
                answers = await asyncio.gather(*unary)
                await asyncio.gather(*streaming)
            async with asyncio.timeout(20):
                code = await process.wait()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert refused.code() == grpc.StatusCode.UNAVAILABLE
    assert all(a.content.startswith("sim-") for a in answers)
    assert all(chunks and chunks[-1].done for chunks in streams)
    assert code == 0, log.read_text()
    assert (
        simulator.stats.by_endpoint["openai.chat"] + simulator.stats.by_endpoint["gemini.generate"]
        == 20
    )  # the refused call never reached the upstream


async def test_sigterm_ends_calls_outliving_the_grace_with_errors_within_one_grace(
    tmp_path: Path,
) -> None:
    # the repro: an HTTP call outliving SHUTDOWN_GRACE made the drain take twice the grace and
    # its client got an empty reply
    grace = 3.0
    port, http_port, metrics_port = free_port(), free_port(), free_port()
    log = tmp_path / "proxy.log"
    long_unary = "A long one. [[sim:delay:30000]]"
    long_stream = "A long story. [[sim:slow:300,words:500]]"
    async with running_simulator(SimulatorConfig()) as simulator:
        process = await serve_process(
            simulator, log, GRPC_PORT=port, HTTP_PORT=http_port, METRICS_PORT=metrics_port,
            SHUTDOWN_GRACE=f"{grace}s", REQUEST_TIMEOUT="60s",
        )  # fmt: skip
        url = f"http://127.0.0.1:{http_port}/v1/chat/completions"

        async def http_call(prompt: str, stream: bool) -> httpx.Response:
            body = {"model": OPENAI, "messages": [{"role": "user", "content": prompt}]}
            async with httpx.AsyncClient(timeout=30) as http:
                return await http.post(url, json={**body, "stream": stream})

        try:
            await wait_ready(f"http://127.0.0.1:{metrics_port}/readyz", process, log)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = pb_grpc.InferenceServiceStub(channel)
                chunks: list[pb.StreamChunk] = []
                grpc_calls = [
                    asyncio.ensure_future(failure(stub.Infer(ask(long_unary)))),
                    asyncio.ensure_future(
                        failure(collect(stub.InferStream(ask(long_stream)), chunks))
                    ),
                ]
                http_calls = [
                    asyncio.ensure_future(http_call(f"Over HTTP: {long_unary}", False)),
                    asyncio.ensure_future(http_call(f"Over HTTP: {long_stream}", True)),
                ]
                assert await simulator.stats.wait_until(lambda st: st.in_flight == 4, 10)
                await asyncio.sleep(0.5)  # the streams are producing
                process.send_signal(signal.SIGTERM)
                started = time.monotonic()
                async with asyncio.timeout(20):
                    code = await process.wait()
                took = time.monotonic() - started
                grpc_unary, grpc_stream = await asyncio.gather(*grpc_calls)
                http_unary, http_stream = await asyncio.gather(*http_calls)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert code == 0, log.read_text()
    assert took < 2 * grace  # one grace and the process's exit; today: two graces and more
    for error in (grpc_unary, grpc_stream):
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert "shutting down" in (error.details() or "")
    assert chunks  # the stream was answering when it was cut
    assert http_unary.status_code == 503  # today: an empty reply
    assert "shutting down" in http_unary.json()["error"]["message"]
    assert http_stream.status_code == 200
    events = [line for line in http_stream.text.splitlines() if line.startswith("data: ")]
    assert "shutting down" in events[-1]  # an SSE error event, not a silent end
    assert '"error"' in events[-1]
    assert "[DONE]" not in http_stream.text
    # counted as what their clients got, on both APIs (gRPC's were counted "cancelled")
    outcomes = [
        json.loads(line)["outcome"]
        for line in log.read_text().splitlines()
        if '"llm_proxy.requests"' in line
    ]
    assert outcomes == ["unavailable"] * 4, outcomes


async def test_redis_lost_under_traffic_fails_open_is_counted_and_recovers(
    tmp_path: Path,
    disposable_redis: RedisServer,  # noqa: F811
) -> None:
    async with stack(**remote_cache(tmp_path, disposable_redis.addr, "fault_matrix")) as s:
        store = s.proxy.container.inference()
        await s.stub.Infer(ask("What is the capital of France?"))
        await store.drain()
        assert (await s.stub.Infer(ask("What is the capital of France?"))).cache.status == (
            pb.CACHE_STATUS_EXACT
        )
        before = await scrape(s)

        disposable_redis.stop()
        answers = await asyncio.gather(
            *(s.stub.Infer(ask(f"Question {i} while Redis is down.")) for i in range(5)),
            s.stub.Infer(ask("What is the capital of France?")),
        )
        chunks: list[pb.StreamChunk] = []
        await collect(s.stub.InferStream(ask("A stream while Redis is down.", GEMINI)), chunks)
        await store.drain()
        down = await scrape(s)

        disposable_redis.start()  # empty: no persistence
        await s.stub.Infer(ask("What is the capital of France?"))
        await store.drain()
        hit = await s.stub.Infer(ask("What is the capital of France?"))
        up = await scrape(s)
    assert all(a.content.startswith("sim-") for a in answers)  # fail-open: no failed request
    assert all(a.cache.status == pb.CACHE_STATUS_MISS for a in answers)
    assert chunks[-1].done
    assert total(down, "cache_errors_total", backend="response_store") >= 6 + total(
        before, "cache_errors_total", backend="response_store"
    )
    assert metric(down, "cache_backend_up", backend="response_store") == 0
    assert metric(up, "cache_backend_up", backend="response_store") == 1
    assert hit.cache.status == pb.CACHE_STATUS_EXACT
    assert total(down, "requests_total") - total(before, "requests_total") == 7
    assert (
        total(down, "requests_total", status="ok") - total(before, "requests_total", status="ok")
        == 7
    )
