"""The llm-proxy image (`make image`), run as a user would: read-only root, its default non-root
user, `serve --simulator`, gRPC into the container with a client token, /readyz, SIGTERM drain.

Skipped, with the reason, when Docker is not usable or the image is absent (tests never build or
pull it: `make image` does; .ci/run builds it before the tests). `$LLM_PROXY_IMAGE` picks another.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from adapters.inbound.grpc.generated import proxy_pb2, proxy_pb2_grpc
from tests.containers import LABEL

import docker  # isort: skip  (after tests.containers, which sets testcontainers' environment)
from testcontainers.core.container import DockerContainer

IMAGE = os.environ.get("LLM_PROXY_IMAGE", "llm-proxy:dev")
TOKEN = "smoke-test-token"
GRACE_S = 3.0
STARTUP_TIMEOUT_S = 60.0
AUTH = (("authorization", f"Bearer {TOKEN}"),)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


@functools.cache
def image_problem() -> str:
    """ "" when Docker is usable and the image is present, else why not."""
    try:
        client = docker.from_env(timeout=10)
        try:
            client.images.get(IMAGE)
        finally:
            client.close()
    except docker.errors.ImageNotFound:
        return f"image {IMAGE} is not present locally (tests never build it): run `make image`"
    except docker.errors.DockerException as error:
        return f"Docker is not usable ({error}): start dockerd, as .ci/run does"
    return ""


@dataclass
class Proxy:
    container: DockerContainer
    grpc_target: str
    ops_url: str

    def wait_ready(self) -> dict[str, object]:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            with contextlib.suppress(httpx.HTTPError):
                answer = httpx.get(f"{self.ops_url}/readyz", timeout=2)
                if answer.status_code == 200:
                    body: dict[str, object] = answer.json()
                    return body
            wrapped = self.container.get_wrapped_container()
            wrapped.reload()
            if wrapped.status != "running" or time.monotonic() > deadline:
                logs = wrapped.logs().decode(errors="replace")[-3000:]
                pytest.fail(f"the container did not become ready ({wrapped.status}):\n{logs}")
            time.sleep(0.25)


@pytest.fixture(scope="module")
def proxy() -> Iterator[Proxy]:
    if problem := image_problem():
        pytest.skip(problem)
    container = (
        DockerContainer(
            IMAGE,
            read_only=True,  # docker run --read-only; the image's own user, not an override
            labels={LABEL: "true"},
        )
        .with_tmpfs_mount("/tmp", "size=16m")
        .with_command(["serve", "--simulator"])
        .with_env("GRPC_HOST", "0.0.0.0")  # reachable through the published port...
        .with_env("AUTH_TOKENS", TOKEN)  # ...so clients need a token
        .with_env("SHUTDOWN_GRACE", f"{GRACE_S}s")
        .with_exposed_ports(50051, 9090)
    )
    container.start()
    try:
        host = container.get_container_host_ip()
        running = Proxy(
            container,
            f"{host}:{container.get_exposed_port(50051)}",
            f"http://{host}:{container.get_exposed_port(9090)}",
        )
        running.wait_ready()
        yield running
    finally:
        container.stop()  # removes the container and its anonymous cache volume


@pytest.fixture
def stub(proxy: Proxy) -> Iterator[proxy_pb2_grpc.InferenceServiceStub]:
    with grpc.insecure_channel(proxy.grpc_target) as channel:
        yield proxy_pb2_grpc.InferenceServiceStub(channel)


def request(prompt: str) -> proxy_pb2.InferenceRequest:
    return proxy_pb2.InferenceRequest(model="gpt-4o-mini", prompt=prompt, max_tokens=32)


def test_the_image_has_no_shell_or_package_manager_and_a_nonroot_user() -> None:
    if problem := image_problem():
        pytest.skip(problem)
    client = docker.from_env()
    try:
        config = client.images.get(IMAGE).attrs["Config"]
        assert config["User"] == "65532:65532"
        assert config["Entrypoint"] == ["llm-proxy"]
        assert config["Cmd"] == ["serve"]
        assert config["StopSignal"] == "SIGTERM"
        container = client.containers.create(IMAGE, labels={LABEL: "true"})
        try:
            for path in ("/bin/sh", "/usr/bin/sh", "/bin/bash", "/usr/bin/apt", "/usr/bin/dpkg"):
                with pytest.raises(docker.errors.NotFound):
                    container.get_archive(path)
        finally:
            container.remove(v=True)
    finally:
        client.close()


def test_it_is_ready_as_nonroot_on_a_read_only_root(proxy: Proxy) -> None:
    assert proxy.wait_ready()["ready"] is True
    wrapped = proxy.container.get_wrapped_container()
    uid = wrapped.exec_run(["python3", "-c", "import os; print(os.getuid(), os.getgid())"])
    assert uid.output.decode().split() == ["65532", "65532"]
    wrapped.reload()
    assert wrapped.attrs["HostConfig"]["ReadonlyRootfs"] is True
    # The embedded cache (default mode) is in use: its directory is writable, the root is not.
    assert "/var/cache/llm-proxy" in {m["Destination"] for m in wrapped.attrs["Mounts"]}


def test_infer_answers_a_client_with_a_token(stub: proxy_pb2_grpc.InferenceServiceStub) -> None:
    answer = stub.Infer(request("a smoke test of the image"), metadata=AUTH, timeout=30)
    assert answer.content
    assert answer.provider == "openai"


def test_infer_refuses_a_client_without_a_token(stub: proxy_pb2_grpc.InferenceServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        stub.Infer(request("no token"), timeout=30)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_infer_stream_streams_to_done(stub: proxy_pb2_grpc.InferenceServiceStub) -> None:
    chunks = list(stub.InferStream(request("stream a smoke test"), metadata=AUTH, timeout=30))
    assert len(chunks) > 1
    assert "".join(chunk.content for chunk in chunks)
    assert chunks[-1].done
    assert not any(chunk.done for chunk in chunks[:-1])


def test_grpc_health_answers_without_a_token(proxy: Proxy) -> None:
    """The Deployment's startupProbe is a native gRPC probe: it sends no token."""
    with grpc.insecure_channel(proxy.grpc_target) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_sigterm_drains_a_stream_in_flight_and_exits_0_within_the_grace(
    proxy: Proxy, stub: proxy_pb2_grpc.InferenceServiceStub
) -> None:
    """Last in this module: it stops the container (as `docker stop` and the kubelet do)."""
    wrapped = proxy.container.get_wrapped_container()
    stream = stub.InferStream(request("drain me"), metadata=AUTH, timeout=30)
    first = next(stream)  # the call is in flight: the simulator streams for about a second
    started = time.monotonic()
    wrapped.kill(signal="SIGTERM")
    rest = list(stream)
    status = wrapped.wait(timeout=GRACE_S + 10)
    elapsed = time.monotonic() - started
    logs = wrapped.logs().decode(errors="replace")
    assert rest, "the stream ended before SIGTERM: nothing was drained"
    assert rest[-1].done, "the stream in flight was cut instead of drained"
    assert not first.done
    assert status["StatusCode"] == 0, logs[-2000:]
    assert elapsed < GRACE_S + 2, f"took {elapsed:.1f}s to exit after SIGTERM"
    assert "shutting down" in logs
