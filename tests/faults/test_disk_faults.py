"""Fault matrix, the embedded cache's disk: full at startup or under traffic, a corrupted vectors
directory, CACHE_DIR deleted while serving. Each row runs the real `llm-proxy serve` process, so a
crash (SIGBUS from a memory-mapped file on a full disk) shows as its exit, not as the test's.

The full-disk rows mount a small tmpfs (root only): skipped, saying why, where mounting is not
permitted."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from adapters.inbound.grpc.generated import proxy_pb2 as pb
from adapters.inbound.grpc.generated import proxy_pb2_grpc as pb_grpc
from simulator import SimulatorConfig, running_simulator
from tests.containers import free_port
from tests.faults.matrix import ask, metric, total
from tests.faults.test_lifecycle_faults import wait_ready
from tests.harness import OPENAI_KEYS, Samples, scrape_port

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
QUESTION = "What is the capital of France?"
VARIANT = "what is the capital of france"  # same words: a semantic hit, not an exact one


@dataclass
class Proxy:
    process: asyncio.subprocess.Process
    stub: pb_grpc.InferenceServiceStub
    metrics_port: int
    log: Path

    async def scrape(self) -> Samples:
        return await scrape_port(self.metrics_port)

    async def until(self, prompt: str, status: int, seconds: float = 20) -> pb.InferenceResponse:
        """Asks `prompt` until the answer has cache `status` (stores run in the background)."""
        async with asyncio.timeout(seconds):
            while True:
                answer = await self.stub.Infer(ask(prompt), timeout=10)
                if answer.cache.status == status:
                    return answer
                await asyncio.sleep(0.2)


@asynccontextmanager
async def proxy(tmp_path: Path, cache_dir: Path) -> AsyncIterator[Proxy]:
    port, metrics_port = free_port(), free_port()
    log = tmp_path / "proxy.log"
    async with running_simulator(SimulatorConfig()) as simulator:
        with log.open("wb") as sink:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "cli", "serve",
                cwd=ROOT,
                env={
                    "PATH": os.environ["PATH"], "LOG_FORMAT": "text",
                    "GRPC_HOST": "127.0.0.1", "GRPC_PORT": str(port),
                    "METRICS_PORT": str(metrics_port), "HTTP_PORT": "0", "WORKERS": "1",
                    "OPENAI_BASE_URL": simulator.openai_base_url,
                    "OPENAI_API_KEYS": ",".join(OPENAI_KEYS),
                    "CACHE_MODE": "embedded", "CACHE_DIR": str(cache_dir),
                    "CACHE_TIMEOUT": "3s", "CACHE_EMBED_MAX_CPU": "1",
                },
                stdout=sink, stderr=sink,
            )  # fmt: skip
        try:
            await wait_ready(f"http://127.0.0.1:{metrics_port}/readyz", process, log)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                yield Proxy(process, pb_grpc.InferenceServiceStub(channel), metrics_port, log)
            assert process.returncode is None, f"the proxy died; its log: {log.read_text()}"
        finally:
            if process.returncode is None:
                process.terminate()
                async with asyncio.timeout(30):
                    await process.wait()


@contextmanager
def small_disk(where: Path, size: str) -> Iterator[Path]:
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True, check=False,
    )  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (root needed): {mounted.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(disk: Path, leave: int = 0) -> Path:
    """A file taking all but `leave` bytes of the disk's free space."""
    filler = disk / "filler"
    with filler.open("wb") as out:
        chunk = b"\0" * (1 << 20)
        while (free := shutil.disk_usage(disk).free) > leave:
            try:
                out.write(chunk[: min(len(chunk), free - leave)])
                out.flush()
            except OSError:
                break
    return filler


async def test_a_full_disk_at_startup_turns_the_semantic_tier_off_and_the_proxy_serves(
    tmp_path: Path,
) -> None:
    with small_disk(tmp_path / "disk", "3m") as disk:
        async with proxy(tmp_path, disk / "cache") as p:
            first = await p.stub.Infer(ask(QUESTION), timeout=10)
            exact = await p.until(QUESTION, pb.CACHE_STATUS_EXACT)  # SQLite fits in 3 MiB
            variant = await p.stub.Infer(ask(VARIANT), timeout=10)
            samples = await p.scrape()
        log = p.log.read_text()
    assert first.content
    assert exact.content == first.content
    assert variant.cache.status == pb.CACHE_STATUS_MISS
    assert metric(samples, "cache_backend_up", backend="vector_index") == 0
    assert "MiB free" in log, log
    assert not (disk / "cache" / "vectors").exists()


async def test_a_disk_filling_under_traffic_turns_the_cache_off_then_it_comes_back(
    tmp_path: Path,
) -> None:
    with small_disk(tmp_path / "disk", "320m") as disk:
        async with proxy(tmp_path, disk / "cache") as p:
            await p.stub.Infer(ask(QUESTION), timeout=10)
            await p.until(VARIANT, pb.CACHE_STATUS_SEMANTIC)

            filler = fill(disk)
            answers = [await p.stub.Infer(ask(f"Question {i} on a full disk?")) for i in range(8)]
            variant = await p.stub.Infer(ask("WHAT is the capital of France"), timeout=10)
            full = await p.scrape()

            filler.unlink()
            await p.stub.Infer(ask("What is the capital of Spain?"), timeout=10)
            back = await p.until("what is the capital of spain", pb.CACHE_STATUS_SEMANTIC)
            up = await p.scrape()
    assert all(a.content for a in answers)  # every request served, the process alive
    assert variant.cache.status == pb.CACHE_STATUS_MISS  # semantic tier off while full
    assert metric(full, "cache_backend_up", backend="vector_index") == 0
    assert back.cache.status == pb.CACHE_STATUS_SEMANTIC
    assert metric(up, "cache_backend_up", backend="vector_index") == 1


async def test_a_corrupted_vectors_directory_is_moved_aside_and_recreated(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    async with proxy(tmp_path, cache) as p:
        await p.stub.Infer(ask(QUESTION), timeout=10)
        await p.until(VARIANT, pb.CACHE_STATUS_SEMANTIC)
    (cache / "vectors" / "edge_config.json").write_text("{ not json")
    for segment in (cache / "vectors" / "segments").iterdir():
        (segment / "segment.json").write_bytes(os.urandom(64))

    async with proxy(tmp_path, cache) as p:
        await p.stub.Infer(ask("What is the capital of Spain?"), timeout=10)
        hit = await p.until("what is the capital of spain", pb.CACHE_STATUS_SEMANTIC)
        samples = await p.scrape()
        log = p.log.read_text()
    assert hit.content
    assert metric(samples, "cache_backend_up", backend="vector_index") == 1
    assert [d.name.split("-")[0] for d in cache.iterdir() if ".corrupt-" in d.name] == [
        "vectors.corrupt"
    ]
    assert "cannot be loaded" in log, log


async def test_cache_dir_deleted_while_serving_is_noticed_and_recreated(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    async with proxy(tmp_path, cache) as p:
        await p.stub.Infer(ask(QUESTION), timeout=10)
        await p.until(VARIANT, pb.CACHE_STATUS_SEMANTIC)
        shutil.rmtree(cache)

        answers = [await p.stub.Infer(ask(f"Question {i} after the delete?")) for i in range(3)]
        noticed = await p.scrape()
        await p.stub.Infer(ask("What is the capital of Spain?"), timeout=10)
        exact = await p.until("What is the capital of Spain?", pb.CACHE_STATUS_EXACT)
        semantic = await p.until("what is the capital of spain", pb.CACHE_STATUS_SEMANTIC)
        log = p.log.read_text()
    assert all(a.content for a in answers)
    for backend in ("response_store", "vector_index"):  # each failed once, then recreated
        assert total(noticed, "cache_errors_total", backend=backend) >= 1, backend
    assert "deleted or replaced while open" in log, log
    assert "deleted while open" in log, log
    assert exact.content
    assert semantic.content
    assert (cache / "responses" / "responses.sqlite3").exists()
    assert (cache / "vectors" / "edge_config.json").exists()
