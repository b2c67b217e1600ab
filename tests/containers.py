"""Redis in Docker for integration tests, through testcontainers.

The image is `$REDIS_IMAGE`; unset, `redis:7`, or else `llm-proxy/redis:local` (built with no
registry by scripts/build_redis_image.sh), whichever is present locally. Images are never pulled.
When Docker is not usable (no daemon, no image, a container that will not start), the tests that
use these fixtures are skipped, and the skip reason says what is missing (`pytest -rs` lists it).

Use from a test module: `from tests.containers import redis_server, disposable_redis`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis

# testcontainers reads its settings when first imported. Ryuk (the reaper container) would have
# to be pulled from a registry; the fixtures remove their containers themselves.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
os.environ.setdefault("TESTCONTAINERS_CONNECTION_MODE", "docker_host")
if os.environ.get("DOCKER_HOST", "unix://").startswith("unix://"):
    os.environ.setdefault("TESTCONTAINERS_HOST_OVERRIDE", "127.0.0.1")

import docker
from testcontainers.community.redis import RedisContainer

DEFAULT_IMAGES = ("redis:7", "llm-proxy/redis:local")
LABEL = "llm-proxy.tests"  # leftovers of a killed run: docker rm -f $(docker ps -aq -f label=...)
READY_TIMEOUT = 10.0


@dataclass
class RedisServer:
    """A running Redis container that a test may stop, start, pause and unpause."""

    container: RedisContainer
    host: str
    port: int

    @property
    def addr(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self) -> None:
        self.container.get_wrapped_container().stop(timeout=0)

    def start(self) -> None:
        self.container.get_wrapped_container().start()
        self.wait_ready()

    def pause(self) -> None:
        self.container.get_wrapped_container().pause()

    def unpause(self) -> None:
        self.container.get_wrapped_container().unpause()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        client = redis.Redis(host=self.host, port=self.port, socket_timeout=0.5)
        try:
            while True:
                try:
                    if client.ping():
                        return
                except redis.RedisError:
                    if time.monotonic() > deadline:
                        raise
                time.sleep(0.05)
        finally:
            client.close()


@functools.cache
def redis_image() -> tuple[str | None, str]:
    """(image, "") when Docker is usable and the image is present, else (None, why not)."""
    wanted = os.environ.get("REDIS_IMAGE")
    candidates = (wanted,) if wanted else DEFAULT_IMAGES
    try:
        client = docker.from_env(timeout=10)
        try:
            client.ping()
            for image in candidates:
                with contextlib.suppress(docker.errors.ImageNotFound):
                    client.images.get(image)
                    return image, ""
        finally:
            client.close()
    except docker.errors.DockerException as error:
        return None, f"Docker is not usable ({error}): start dockerd, as .ci/run does"
    build = f"scripts/build_redis_image.sh {wanted}" if wanted else "scripts/build_redis_image.sh"
    return None, (
        f"Docker image {' or '.join(candidates)} is not present locally (tests never pull): "
        f"build one with {build}"
    )


@contextlib.contextmanager
def running_redis(host_port: int | None = None) -> Iterator[RedisServer]:
    """Starts a Redis container, or skips the test saying why it cannot. With `host_port`, the
    port stays the same across stop() and start()."""
    image, problem = redis_image()
    if image is None:
        pytest.skip(problem)
    container = RedisContainer(image, labels={LABEL: "true"})
    if host_port is not None:
        container.with_bind_ports(6379, host_port)
    try:
        container.start()
        server = RedisServer(
            container, container.get_container_host_ip(), int(container.get_exposed_port(6379))
        )
    except Exception as error:  # the daemon answers but cannot run containers
        _remove(container)
        pytest.skip(f"Docker could not start a Redis container from {image}: {error}")
    try:
        yield server
    finally:
        _remove(container)


def _remove(container: Any) -> None:
    with contextlib.suppress(Exception):
        container.stop()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One Redis for the whole session. Tests must not stop it; use `disposable_redis`."""
    with running_redis() as server:
        yield server


@pytest.fixture
def disposable_redis() -> Iterator[RedisServer]:
    """A Redis of the test's own, on a fixed host port, to stop, start, pause and unpause."""
    with running_redis(host_port=free_port()) as server:
        yield server
