"""`llm-proxy serve` with WORKERS=2: one supervisor, two worker processes on the same ports."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
from pathlib import Path

import grpc
import httpx
import pytest

from adapters.inbound.grpc.generated import proxy_pb2 as pb
from adapters.inbound.grpc.generated import proxy_pb2_grpc as pb_grpc
from simulator import SimulatorConfig, running_simulator

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


async def start(upstream: str, **env: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli", "serve",
        cwd=ROOT,
        env={
            "PATH": os.environ["PATH"], "CACHE_MODE": "off", "LOG_FORMAT": "text",
            "GRPC_PORT": "0", "METRICS_PORT": "0", "HTTP_PORT": "0",
            "OPENAI_API_KEYS": "sim-openai-key-1",
            "OPENAI_BASE_URL": upstream, "SHUTDOWN_GRACE": "10s", **env,
        },
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def read_until(process: asyncio.subprocess.Process, pattern: str, count: int = 1) -> str:
    assert process.stderr is not None
    seen = ""
    async with asyncio.timeout(60):
        while len(re.findall(pattern, seen)) < count:
            line = await process.stderr.readline()
            if not line:
                raise AssertionError(f"process ended before printing {pattern!r}:\n{seen}")
            seen += line.decode()
    return seen


def free_port() -> int:
    """HTTP_PORT=0 turns the HTTP API off, so it needs a number: one free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def counter(text: str, name: str) -> float:
    return sum(float(m) for m in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


async def test_two_workers_share_the_ports_sum_their_metrics_and_drain_on_sigterm() -> None:
    config = SimulatorConfig(unary_latency_s=0.6)  # long enough to be in flight at SIGTERM
    async with running_simulator(config) as sim:
        http_port = free_port()
        process = await start(sim.openai_base_url, WORKERS="2", HTTP_PORT=str(http_port))
        try:
            log = await read_until(process, r"serving inferenceproxy\.InferenceService", 2)
            found = re.search(
                r"GRPC_PORT=(\d+), METRICS_PORT=(\d+), HTTP_PORT=" + str(http_port), log
            )
            assert found, log
            grpc_port, metrics_port = found.groups()
            assert len(set(re.findall(r"supervising 2 workers \(pids (\d+), (\d+)\)", log)[0])) == 2

            # a connection goes to one worker: several connections reach both
            channels = [grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") for _ in range(8)]
            try:
                stubs = [pb_grpc.InferenceServiceStub(c) for c in channels]
                replies = await asyncio.gather(*(
                    stubs[i % 8].Infer(pb.InferenceRequest(model="gpt-4o", prompt=f"q {i}"),
                                       timeout=20)
                    for i in range(24)
                ))  # fmt: skip
                assert all(r.content for r in replies)
            finally:
                for channel in channels:
                    await channel.close()

            async with httpx.AsyncClient() as http:  # the OpenAI-compatible API: the same sharing
                for i in range(8):
                    answer = await http.post(
                        f"http://127.0.0.1:{http_port}/v1/chat/completions",
                        json={
                            "model": "gpt-4o",
                            "messages": [{"role": "user", "content": f"h {i}"}],
                        },
                        headers={"connection": "close"},  # a new connection each: both workers
                        timeout=20,
                    )
                    assert answer.status_code == 200, answer.text

            async with httpx.AsyncClient() as http:
                for _ in range(4):  # whichever worker answers the scrape, it shows them all
                    text = (await http.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
                    assert counter(text, "requests_total") == 32
                    breaker_pids = set(re.findall(r'circuit_breaker_state{pid="(\d+)"', text))
                    assert len(breaker_pids) == 2  # one breaker per worker, labelled by pid

            # SIGTERM to the supervisor while calls are in flight: they finish, it exits 0
            async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
                stub = pb_grpc.InferenceServiceStub(channel)
                calls = [
                    asyncio.ensure_future(stub.Infer(
                        pb.InferenceRequest(model="gpt-4o", prompt=f"slow {i}"), timeout=20
                    ))
                    for i in range(4)
                ]  # fmt: skip
                await asyncio.sleep(0.4)
                process.send_signal(signal.SIGTERM)
                replies = await asyncio.gather(*calls)
                assert all(r.content for r in replies)
            async with asyncio.timeout(30):
                assert await process.wait() == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()


async def test_a_second_instance_on_the_same_port_fails_naming_grpc_port(tmp_path: Path) -> None:
    async with running_simulator(SimulatorConfig()) as sim:
        first = await start(
            sim.openai_base_url, WORKERS="2", CACHE_MODE="embedded", CACHE_DIR=str(tmp_path)
        )
        try:
            log = await read_until(first, r"serving inferenceproxy\.InferenceService", 2)
            assert "unavailable" not in log, log
            found = re.search(r"GRPC_PORT=(\d+)", log)
            assert found, log
            for workers in ("2", "1"):
                second = await start(sim.openai_base_url, WORKERS=workers, GRPC_PORT=found.group(1))
                async with asyncio.timeout(60):
                    code = await second.wait()
                assert second.stderr is not None
                err = (await second.stderr.read()).decode()
                assert code == 2, err
                assert "GRPC_PORT" in err
                assert "Traceback" not in err
        finally:
            first.send_signal(signal.SIGTERM)
            async with asyncio.timeout(30):
                assert await first.wait() == 0


def connections_by_pid(pids: list[int], port: int) -> dict[int, int]:
    """How many established TCP connections to local `port` each process holds."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                    inodes.add(fields[9])
    counts = {}
    for pid in pids:
        links = (os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd"))
        counts[pid] = sum(link[8:-1] in inodes for link in links if link.startswith("socket:"))
    return counts


async def test_an_answer_stored_by_one_worker_is_found_by_every_worker(tmp_path: Path) -> None:
    async with running_simulator(SimulatorConfig()) as sim:
        process = await start(
            sim.openai_base_url, WORKERS="2", CACHE_MODE="embedded", CACHE_DIR=str(tmp_path),
            CACHE_TIMEOUT="3s", CACHE_EMBED_MAX_CPU="1",
        )  # fmt: skip
        channels: list[grpc.aio.Channel] = []
        try:
            log = await read_until(process, r"serving inferenceproxy\.InferenceService", 2)
            found = re.search(r"supervising 2 workers \(pids (\d+), (\d+)\).*GRPC_PORT=(\d+)", log)
            assert found, log
            pids, port = [int(found[1]), int(found[2])], int(found[3])
            own = [
                ("grpc.use_local_subchannel_pool", 1)
            ]  # a connection per channel, not one shared
            channels = [
                grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=own) for _ in range(12)
            ]
            stubs = [pb_grpc.InferenceServiceStub(c) for c in channels]
            question = "How do I reset my router password?"
            stored = await stubs[0].Infer(pb.InferenceRequest(model="gpt-4o", prompt=question))
            async with asyncio.timeout(30):  # the store (and its vector) lands in the background
                for _ in range(150):
                    ask = pb.InferenceRequest(model="gpt-4o", prompt=question.lower())
                    if (await stubs[0].Infer(ask)).cache.status == pb.CACHE_STATUS_SEMANTIC:
                        break
                    await asyncio.sleep(0.2)
                else:
                    raise AssertionError("the stored answer never became a semantic hit")

            variants = [question.upper(), question.rstrip("?"), f"  {question.lower()}"]
            answers = [
                await stub.Infer(pb.InferenceRequest(model="gpt-4o", prompt=variants[i % 3]))
                for i, stub in enumerate(stubs)
            ]
            spread = connections_by_pid(pids, port)
            assert all(count >= 1 for count in spread.values()), spread  # both workers asked
            assert [a.cache.status for a in answers] == [pb.CACHE_STATUS_SEMANTIC] * 12
            assert {a.content for a in answers} == {stored.content}
            # one vector shard for all (and the usage ledger, STATE_BACKEND=local)
            assert sorted(os.listdir(tmp_path)) == ["responses", "state", "vectors"]

            # the index process killed: lookups miss (fail open), then it is started again
            index_pid = re.search(r"started the vector index process \(pid (\d+)\)", log)
            assert index_pid, log
            os.kill(int(index_pid[1]), signal.SIGKILL)
            during = await stubs[1].Infer(pb.InferenceRequest(model="gpt-4o", prompt=variants[0]))
            assert during.content  # answered: a miss, the index being down
            assert during.cache.status == pb.CACHE_STATUS_MISS
            await read_until(process, r"started the vector index process", 1)
            async with asyncio.timeout(30):
                for i in range(1, 150):  # a new exact key each time, the same words
                    ask = pb.InferenceRequest(model="gpt-4o", prompt=question.lower() + " " * i)
                    if (await stubs[2].Infer(ask)).cache.status == pb.CACHE_STATUS_SEMANTIC:
                        break
                    await asyncio.sleep(0.2)
                else:
                    raise AssertionError("no semantic hit after the index process restarted")
        finally:
            for channel in channels:
                await channel.close()
            process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(30):
                assert await process.wait() == 0


def alive(pid: int) -> bool:
    """Running (a zombie, dead but not yet reaped, is not)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in status


async def test_workers_die_with_a_sigkilled_supervisor() -> None:
    pids: list[int] = []
    async with running_simulator(SimulatorConfig()) as sim:
        process = await start(sim.openai_base_url, WORKERS="2", SHUTDOWN_GRACE="1s")
        try:
            log = await read_until(process, r"serving inferenceproxy\.InferenceService", 2)
            found = re.findall(r"supervising 2 workers \(pids (\d+), (\d+)\)", log)
            pids = [int(pid) for pid in found[0]]
            assert all(alive(pid) for pid in pids)
            process.kill()  # SIGKILL: the supervisor passes nothing on
            await process.wait()
            for _ in range(100):  # they drain (SHUTDOWN_GRACE 1 s) and exit
                if not any(alive(pid) for pid in pids):
                    break
                await asyncio.sleep(0.1)
            orphans = [pid for pid in pids if alive(pid)]
        finally:
            if process.returncode is None:
                process.kill()
            for pid in filter(alive, pids):  # today: they keep serving; leave none behind
                os.kill(pid, signal.SIGKILL)
    assert orphans == []
