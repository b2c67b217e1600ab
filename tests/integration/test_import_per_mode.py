"""A process imports the heavy dependencies of the adapters its mode wires, and no others: with
CACHE_MODE=off no numpy, tokenizers, Qdrant or Redis client is loaded (their import alone is most of
the idle RSS, see docs/benchmarks.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]

# Serves until both servers listen, stops, then prints the top-level packages it imported.
SERVE_BRIEFLY = """
import asyncio, json, sys
from adapters.process.settings import load_settings
from cli import serve
from container import Container

async def main():
    settings = load_settings(grpc_port=0, metrics_port=0, http_port=0, **json.loads(sys.argv[1]))
    container = Container(settings=settings)
    stop = asyncio.Event()
    serving = asyncio.create_task(serve(container, stop))
    while not container.grpc_server().serving:
        if serving.done():
            serving.result()
        await asyncio.sleep(0.01)
    stop.set()
    await serving

asyncio.run(main())
print(json.dumps(sorted({name.split(".")[0] for name in sys.modules})))
"""
HEAVY = {
    "numpy",
    "tokenizers",
    "safetensors",
    "onnx",
    "onnxruntime",
    "qdrant_client",
    "qdrant_edge",
    "redis",
}


def imported(settings: dict[str, str], tmp_path: Path) -> set[str]:
    run = subprocess.run(
        [sys.executable, "-c", SERVE_BRIEFLY, json.dumps({"cache_dir": str(tmp_path), **settings})],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    return set(json.loads(run.stdout.splitlines()[-1]))


def test_cache_off_imports_no_cache_dependency(tmp_path: Path) -> None:
    assert imported({"cache_mode": "off"}, tmp_path) & HEAVY == set()


def test_embedded_cache_imports_neither_qdrant_client_nor_redis(tmp_path: Path) -> None:
    modules = imported({"cache_mode": "embedded", "embedder": "local"}, tmp_path)
    assert {"qdrant_edge", "tokenizers", "numpy", "onnxruntime"} <= modules
    assert modules & {"qdrant_client", "redis"} == set()


def test_remote_cache_with_an_api_embedder_imports_no_local_engine(tmp_path: Path) -> None:
    settings = {
        "cache_mode": "remote",
        "embedder": "openai",
        "embedding_api_key": "sk-test",
        "embedding_base_url": "http://127.0.0.1:1/v1",
        "redis_addr": "127.0.0.1:1",
        "qdrant_url": "http://127.0.0.1:1",
    }
    modules = imported(settings, tmp_path)
    assert {"qdrant_client", "redis"} <= modules
    assert modules & {"qdrant_edge", "tokenizers", "safetensors", "onnxruntime"} == set()
