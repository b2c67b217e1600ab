"""`llm-proxy serve` as a process: startup, configuration errors, graceful shutdown."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import tempfile
from pathlib import Path

import grpc
import httpx
import pytest
from dependency_injector import providers
from grpc_health.v1 import health_pb2, health_pb2_grpc

from adapters.inbound.grpc.generated import proxy_pb2 as pb
from adapters.inbound.grpc.generated import proxy_pb2_grpc as pb_grpc
from adapters.outbound.vector.edge import EdgeIndex
from adapters.process.lifecycle import StartupError
from adapters.process.settings import load_settings
from cli import serve
from container import Container
from tests.fakes import FakeProvider
from tests.harness import FAST

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = Path(tempfile.mkdtemp(prefix="llm-proxy-serve-test-"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def start_proxy(*args: str, **env: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli", "serve", *args,
        cwd=ROOT,
        env={
            "PATH": os.environ["PATH"],
            "METRICS_PORT": "0",
            "HTTP_PORT": "0",
            "WORKERS": "1",
            "CACHE_DIR": str(CACHE_DIR),
            **env,
        },
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def read_until(process: asyncio.subprocess.Process, text: str) -> str:
    assert process.stderr is not None
    seen = ""
    async with asyncio.timeout(20):
        while text not in seen:
            line = await process.stderr.readline()
            if not line:
                raise AssertionError(f"process ended before printing {text!r}:\n{seen}")
            seen += line.decode()
    return seen


async def test_serve_answers_health_and_exits_cleanly_on_sigterm() -> None:
    port = free_port()
    process = await start_proxy(GRPC_PORT=str(port), OPENAI_API_KEYS="sk-never-logged-1")
    try:
        log = await read_until(process, "serving inferenceproxy.InferenceService")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            code = await process.wait()
        assert process.stderr is not None
        log += (await process.stderr.read()).decode()
        assert code == 0
        assert "shutting down" in log
        assert "sk-never-logged" not in log
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_serve_with_the_simulator_answers_with_no_keys_and_no_servers() -> None:
    port = free_port()
    process = await start_proxy("--simulator", GRPC_PORT=str(port), OPENAI_API_KEYS="sk-real-1")
    try:
        log = await read_until(process, "serving inferenceproxy.InferenceService")
        assert "UPSTREAM SIMULATOR ENABLED" in log
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.InferenceServiceStub(channel)
            request = pb.InferenceRequest(
                model="gpt-4", prompt="Explain goroutines.", temperature=0.7, max_tokens=256
            )
            response = await stub.Infer(request, timeout=10)
            assert response.content.startswith("sim-")
            assert response.provider == "openai"
            chunks = [c async for c in stub.InferStream(request, timeout=10)]
            assert chunks[-1].done
            for model, provider in (("claude-sonnet-4-5", "anthropic"), ("gemini-pro", "gemini")):
                request = pb.InferenceRequest(model=model, prompt="Write a haiku.", max_tokens=64)
                response = await stub.Infer(request, timeout=10)
                assert (response.provider, response.content[:4]) == (provider, "sim-")
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_invalid_configuration_fails_at_startup_naming_the_variable() -> None:
    process = await start_proxy(CACHE_TTL="an hour", CB_FAILURE_THRESHOLD="0")
    async with asyncio.timeout(20):
        code = await process.wait()
    assert process.stderr is not None
    err = (await process.stderr.read()).decode()
    assert code == 2
    assert "CACHE_TTL" in err
    assert "CB_FAILURE_THRESHOLD" in err
    assert "Traceback" not in err


async def ended(process: asyncio.subprocess.Process) -> tuple[int, str]:
    async with asyncio.timeout(20):
        code = await process.wait()
    assert process.stderr is not None
    return code, (await process.stderr.read()).decode()


async def test_without_tokens_it_serves_on_loopback_only() -> None:
    port = free_port()
    process = await start_proxy(GRPC_PORT=str(port), CACHE_MODE="off")
    try:
        log = await read_until(process, "serving inferenceproxy.InferenceService")
        assert f"on 127.0.0.1:{port} (plaintext, no client tokens;" in log
    finally:
        process.send_signal(signal.SIGTERM)
        await ended(process)


async def test_a_public_bind_without_tokens_refuses_to_start() -> None:
    process = await start_proxy(GRPC_HOST="0.0.0.0", GRPC_PORT=str(free_port()))
    code, err = await ended(process)
    assert code == 2
    assert "AUTH_TOKENS" in err
    assert "ALLOW_UNAUTHENTICATED" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "variable", ["OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"]
)
async def test_an_unsupported_otlp_protocol_stops_startup_naming_the_variable(
    variable: str,
) -> None:
    process = await start_proxy(
        GRPC_PORT=str(free_port()),
        CACHE_MODE="off",
        OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:1",
        **{variable: "http/json"},
    )
    code, err = await ended(process)
    assert code == 2
    assert f"{variable}='http/json'" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("variable", ["GRPC_PORT", "METRICS_PORT", "HTTP_PORT"])
async def test_a_port_in_use_stops_startup_naming_the_variable(variable: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ports = {"GRPC_PORT": str(free_port()), "METRICS_PORT": "0"}
        ports[variable] = str(taken.getsockname()[1])
        process = await start_proxy(CACHE_MODE="off", **ports)
        code, err = await ended(process)
    assert code == 2
    assert variable in err
    assert "another instance" in err
    assert "Traceback" not in err


async def test_a_cache_dir_that_cannot_be_created_is_a_warning_and_serving_goes_on() -> None:
    blocker = CACHE_DIR / "a-regular-file"
    blocker.write_text("CACHE_DIR cannot be a directory under this")  # root ignores chmod
    port = free_port()
    process = await start_proxy(GRPC_PORT=str(port), CACHE_DIR=str(blocker / "cache"))
    try:
        log = await read_until(process, "serving inferenceproxy.InferenceService")
        assert "CACHE_DIR=" in log
        assert "WITHOUT the cache" in log
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        process.send_signal(signal.SIGTERM)
        code, rest = await ended(process)
    assert code == 0
    assert "Traceback" not in log + rest


async def test_shutdown_lets_in_flight_calls_finish_and_refuses_new_ones() -> None:
    container = Container(settings=load_settings(**FAST))
    fake = FakeProvider("openai")
    fake.gate = asyncio.Event()
    container.provider_adapters.override(providers.Object({"openai": fake}))
    stop = asyncio.Event()
    serving = asyncio.create_task(serve(container, stop))
    server = container.grpc_server()
    for _ in range(200):
        if server.port:
            break
        await asyncio.sleep(0.01)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        in_flight = stub.Infer(pb.InferenceRequest(model="gpt-4o", prompt="slow one"))
        await asyncio.wait_for(fake.entered.wait(), 5)
        stop.set()
        await asyncio.sleep(0.1)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Infer(pb.InferenceRequest(model="gpt-4o", prompt="late"), timeout=2)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        fake.gate.set()
        assert (await in_flight).content == "echo: slow one"
    await asyncio.wait_for(serving, 5)


async def test_unready_while_draining_after_sigterm_and_in_flight_calls_finish() -> None:
    port, metrics_port = free_port(), free_port()
    process = await start_proxy(
        "--simulator",
        GRPC_PORT=str(port),
        METRICS_PORT=str(metrics_port),
        SHUTDOWN_GRACE="10s",
        CACHE_MODE="off",
    )
    ready_url = f"http://127.0.0.1:{metrics_port}/readyz"
    try:
        await read_until(process, "serving inferenceproxy.InferenceService")
        async with httpx.AsyncClient() as http:
            assert (await http.get(ready_url)).status_code == 200
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = pb_grpc.InferenceServiceStub(channel)
                slow = asyncio.ensure_future(
                    stub.Infer(
                        pb.InferenceRequest(model="gpt-4o", prompt="slow [[sim:delay:2000]]")
                    )
                )
                await asyncio.sleep(0.5)
                process.send_signal(signal.SIGTERM)
                draining = None
                for _ in range(100):
                    reply = await http.get(ready_url)
                    if reply.status_code == 503:
                        draining = reply.json()
                        break
                    await asyncio.sleep(0.02)
                assert draining is not None, "never reported unready while draining"
                assert draining["checks"]["serving"] is False
                assert (await slow).content.startswith("sim-")
        async with asyncio.timeout(15):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_a_vector_collection_of_another_dimension_stops_startup_clearly(
    tmp_path: Path,
) -> None:
    index = EdgeIndex(tmp_path / "vectors")  # left behind by an embedder of 64 dimensions
    await index.ensure_ready(64)
    await index.close()
    process = await start_proxy(CACHE_DIR=str(tmp_path), GRPC_PORT=str(free_port()))
    async with asyncio.timeout(30):
        code = await process.wait()
    assert process.stderr is not None
    err = (await process.stderr.read()).decode()
    assert code == 2
    assert "384" in err
    assert "64" in err
    assert "Traceback" not in err


def test_calibrate_reports_rates_per_category_through_a_real_cache(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from cli import main

    monkeypatch.delenv("CACHE_MODE", raising=False)
    monkeypatch.delenv("EMBEDDER", raising=False)
    preamble = "Please follow the house rules carefully before you answer this. " * 30
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "\n".join(
            [
                '{"a": "How do I reset my password?", "b": "HOW DO I RESET MY PASSWORD",'
                ' "should_hit": true, "category": "near_repeat", "half": "tune"}',
                '{"a": "Is the shop open on Sundays?", "b": "Is the shop closed on Sundays?",'
                ' "should_hit": false, "category": "negation_antonym", "half": "check"}',
                f'{{"a": "{preamble}Who wrote Hamlet?", "b": "{preamble}Who wrote Macbeth?",'
                ' "should_hit": false, "category": "long_preamble", "half": "check"}',
            ]
        )
    )
    assert main(["calibrate", str(pairs), "--thresholds", "0.90:0.95:0.05"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.strip()}
    assert rows["category"][-2:] == ["tune", "check"]  # hits/pairs per half
    assert rows["near_repeat"] == ["1", "yes", "1", "100.0%", "1/1", "-"]
    assert rows["negation_antonym"] == ["1", "no", "0", "0.0%", "-", "0/1"]
    assert rows["long_preamble"] == ["1", "no", "0", "0.0%", "-", "0/1"]
    assert "hit rate 100.0% (1/1 should-hit pairs); false-hit rate 0.0% (0/2" in out
    assert "half tune: hit rate 100.0% (1/1 should-hit pairs)" in out
    assert "half check: hit rate 0.0% (0/0 should-hit pairs); false-hit rate 0.0% (0/2" in out
    assert rows["0.90"] == ["100.0%", "0.0%", "100.0%"]  # cosine alone lets both through
    assert main(["calibrate", str(pairs), "--half", "tune"]) == 0
    assert "1 pairs from" in capsys.readouterr().out
    assert main(["calibrate", str(pairs), "--half", "nope"]) == 2


def background_tasks() -> set[asyncio.Task[object]]:
    return {task for task in asyncio.all_tasks() if task is not asyncio.current_task()}


def embedded_with_api_embedder(tmp_path: Path, **settings: str) -> Container:
    """The embedded cache with an embeddings API where nothing listens: the cache starts (the
    embedder fails open) with its sweeper, and the embeddings client exists."""
    return Container(
        settings=load_settings(**{
            **FAST, "cache_mode": "embedded", "cache_dir": str(tmp_path), "embedder": "openai",
            "embedding_api_key": "sk-test", "embedding_base_url": "http://127.0.0.1:1/v1",
            **settings,
        })
    )  # fmt: skip


async def test_shutdown_stops_the_sweeper_and_closes_every_client(tmp_path: Path) -> None:
    container = embedded_with_api_embedder(tmp_path)
    before = background_tasks()
    stop = asyncio.Event()
    serving = asyncio.create_task(serve(container, stop))
    async with asyncio.timeout(30):
        while not container.grpc_server().serving:
            if serving.done():
                serving.result()  # startup failed: raise its error
            await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(serving, 30)
    for client in ("openai_http", "gemini_http", "embedding_http"):
        assert getattr(container, client)().is_closed, client
    assert background_tasks() - before == set()  # the sweeper was cancelled and awaited


async def test_a_failed_start_stops_what_had_started(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        container = embedded_with_api_embedder(tmp_path, metrics_port=str(taken.getsockname()[1]))
        before = background_tasks()
        with pytest.raises(StartupError, match="METRICS_PORT"):
            await serve(container, asyncio.Event())
    assert container.embedding_http().is_closed
    assert container.openai_http().is_closed
    assert background_tasks() - before == set()
