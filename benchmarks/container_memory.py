"""Image size and the container's memory (RSS of the proxy process) idle and after a bounded load,
in embedded and remote cache mode. The figures size the Deployment's requests and limits.

    .venv/bin/python benchmarks/container_memory.py [--image llm-proxy:dev] [--requests 400]

Each mode runs `llm-proxy serve --simulator` in a read-only container as the image's user and
sends --requests calls (unary and streamed, 8 at a time, a third of the prompts repeated so the
cache hits). Remote mode uses a Redis container (REDIS_IMAGE, default llm-proxy/redis:local) and
an unreachable Qdrant: no Qdrant server exists here, so every vector call fails open (the cost of a
Qdrant client and its connection pool is in the figure; Qdrant's own answers are not).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import docker
import grpc
import httpx

from adapters.inbound.grpc.generated import proxy_pb2 as pb
from adapters.inbound.grpc.generated import proxy_pb2_grpc as pb_grpc

TOKEN = "benchmark-token"
LABEL = {"llm-proxy.tests": "true"}
# The image has no shell or cat, but it has Python.
PROBE = "print(*(ln for ln in open('/proc/1/status') if ln.startswith(('VmRSS', 'VmHWM'))))"


def memory_mib(container: docker.models.containers.Container) -> dict[str, float]:
    """VmRSS (now) and VmHWM (peak) of the container's PID 1, the proxy."""
    out = container.exec_run(["python3", "-c", PROBE]).output.decode()
    fields = (line.split(":") for line in out.splitlines() if ":" in line)
    return {name.strip(): int(value.split()[0]) / 1024 for name, value in fields}


def wait_ready(url: str, container: docker.models.containers.Container) -> float:
    started = time.monotonic()
    while time.monotonic() - started < 90:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        container.reload()
        if container.status != "running":
            raise SystemExit(container.logs().decode()[-3000:])
        time.sleep(0.2)
    raise SystemExit("not ready after 90s")


def load(target: str, requests: int) -> None:
    metadata = (("authorization", f"Bearer {TOKEN}"),)
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)

        def call(i: int) -> None:
            prompt = f"question {i % (requests * 2 // 3)} about deployment"  # a third repeat
            request = pb.InferenceRequest(model="gpt-4o-mini", prompt=prompt, max_tokens=64)
            if i % 2:
                list(stub.InferStream(request, metadata=metadata, timeout=60))
            else:
                stub.Infer(request, metadata=metadata, timeout=60)

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(call, range(requests)))


def measure(client: docker.DockerClient, image: str, env: dict[str, str], requests: int) -> None:
    container = client.containers.run(
        image,
        ["serve", "--simulator"],
        detach=True,
        read_only=True,
        tmpfs={"/tmp": "size=16m"},
        labels=LABEL,
        environment={"GRPC_HOST": "0.0.0.0", "AUTH_TOKENS": TOKEN, **env},
        ports={"50051/tcp": ("127.0.0.1", None), "9090/tcp": ("127.0.0.1", None)},
    )
    try:
        container.reload()
        ports = container.attrs["NetworkSettings"]["Ports"]
        grpc_port, ops_port = (ports[f"{p}/tcp"][0]["HostPort"] for p in (50051, 9090))
        ready_s = wait_ready(f"http://127.0.0.1:{ops_port}", container)
        idle = memory_mib(container)
        started = time.monotonic()
        load(f"127.0.0.1:{grpc_port}", requests)
        elapsed = time.monotonic() - started
        loaded = memory_mib(container)
        mode = env.get("CACHE_MODE", "embedded")
        print(
            f"{mode:9} ready in {ready_s:4.1f}s | RSS idle {idle['VmRSS']:6.1f} MiB | "
            f"after {requests} calls in {elapsed:4.1f}s: RSS {loaded['VmRSS']:6.1f} MiB, "
            f"peak {loaded['VmHWM']:6.1f} MiB"
        )
    finally:
        container.remove(force=True, v=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", default="llm-proxy:dev")
    parser.add_argument("--requests", type=int, default=400)
    args = parser.parse_args()
    client = docker.from_env()
    size = client.images.get(args.image).attrs["Size"]
    print(f"image {args.image}: {size / 2**20:.0f} MiB")
    measure(client, args.image, {}, args.requests)
    redis_image = os.environ.get("REDIS_IMAGE", "llm-proxy/redis:local")
    redis = client.containers.run(redis_image, ["redis-server"], detach=True, labels=LABEL)
    try:
        redis.reload()
        redis_ip = redis.attrs["NetworkSettings"]["IPAddress"]
        remote = {
            "CACHE_MODE": "remote",
            "REDIS_ADDR": f"{redis_ip}:6379",
            "QDRANT_URL": "http://127.0.0.1:6333",  # nothing listens: vector calls fail open
            "EMBEDDER": "openai",
            "EMBEDDING_API_KEY": "sim-embedding-key",
        }
        measure(client, args.image, remote, args.requests)
    finally:
        redis.remove(force=True, v=True)


if __name__ == "__main__":
    main()
