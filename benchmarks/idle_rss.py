"""Idle RSS of `llm-proxy serve` per cache mode: what a process holds once it serves, before any
call. Each heavy dependency is imported only when the mode wires its adapter, so the figures
differ by what each mode loads (off: no numpy, tokenizers, Qdrant or Redis client).

    .venv/bin/python benchmarks/idle_rss.py [--settle 3]

Every mode runs as a subprocess on loopback with ephemeral ports and the local embedder. The remote
mode points at Redis and Qdrant addresses where nothing listens (the cache fails open): its figure
holds the Redis and Qdrant clients, not their connections' buffers.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = {
    "off": {"CACHE_MODE": "off"},
    "embedded": {"CACHE_MODE": "embedded", "EMBEDDER": "local"},
    "remote": {
        "CACHE_MODE": "remote",
        "EMBEDDER": "local",
        "REDIS_ADDR": "127.0.0.1:1",
        "QDRANT_URL": "http://127.0.0.1:1",
    },
}


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def idle_rss(env: dict[str, str], settle: float) -> float:
    with tempfile.TemporaryDirectory() as cache_dir:
        process = subprocess.Popen(
            [sys.executable, "-m", "cli", "serve"],
            cwd=ROOT,
            env={"PATH": os.environ["PATH"], "GRPC_PORT": "0", "METRICS_PORT": "0",
                 "HTTP_PORT": "0", "WORKERS": "1",
                 "CACHE_DIR": cache_dir, "LOG_FORMAT": "text", **env},
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        try:
            assert process.stderr is not None
            deadline = time.monotonic() + 60
            for line in process.stderr:
                if "serving inferenceproxy" in line:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError("the proxy did not start within 60s")
            else:
                raise RuntimeError(f"the proxy ended before serving (exit {process.wait()})")
            time.sleep(settle)
            return rss_mib(process.pid)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settle", type=float, default=3.0, help="seconds idle before reading")
    args = parser.parse_args()
    print(f"{'CACHE_MODE':<10} {'idle RSS (MiB)':>14}")
    for mode, env in MODES.items():
        print(f"{mode:<10} {idle_rss(env, args.settle):>14.1f}", flush=True)


if __name__ == "__main__":
    main()
