"""The composition root: settings -> container -> server; `llm-proxy` starts here."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Mapping
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
from dependency_injector import containers, providers
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from qdrant_client import AsyncQdrantClient

from adapters.embedders.gemini import GeminiEmbedder
from adapters.embedders.local import LocalMiniLMEmbedder
from adapters.embedders.openai import OpenAIEmbedder
from adapters.grpc.server import GrpcServer
from adapters.grpc.servicer import InferenceServicer
from adapters.observability.http import OpsServer, Readiness
from adapters.observability.logs import configure_logging
from adapters.observability.prometheus import PrometheusMetrics
from adapters.observability.tracing import (
    NullTracer,
    OtelTracer,
    TracingInterceptor,
    setup_tracing,
)
from adapters.providers import HttpSettings, http_client
from adapters.providers.gemini import GeminiProvider
from adapters.providers.openai import OpenAIProvider
from adapters.settings import ConfigError, Settings, load_settings
from adapters.simulator import RunningSimulator, SimulatorConfig, running_simulator
from adapters.simulator import cli as simulator_cli
from adapters.store.embedded import EmbeddedStore
from adapters.store.redis import RedisStore, redis_client
from adapters.system import AsyncioSleeper, SystemClock, SystemRandom
from adapters.vector import IncompatibleIndex
from adapters.vector.edge import EdgeIndex
from adapters.vector.qdrant import QdrantIndex
from application.calibration import LabelledPair, ThresholdReport, report, score
from application.inference import InferenceService
from application.ports import Provider, ResponseCache, Tracer
from application.resilience import Upstream
from application.semantic_cache import CachePolicy, SemanticCache
from domain.backoff import BackoffPolicy
from domain.circuit_breaker import CircuitBreaker
from domain.key_pool import ApiKey, KeyPool
from domain.routing import ModelRouter

log = logging.getLogger("llm_proxy")


def build_upstreams(settings: Settings, adapters: Mapping[str, Provider]) -> dict[str, Upstream]:
    """A key pool and a breaker for every provider that has an adapter and at least one key."""
    upstreams = {}
    for name, adapter in adapters.items():
        keys = [ApiKey(value) for value in settings.api_keys(name)]
        if not keys:
            continue
        upstreams[name] = Upstream(
            adapter,
            KeyPool(name, keys, settings.key_cooldown_default),
            CircuitBreaker(
                name,
                settings.cb_failure_threshold,
                settings.cb_cooldown,
                settings.cb_half_open_probes,
            ),
        )
    return upstreams


def upstream_client(
    base_url: str, connect: float, read: float, max_connections: int
) -> httpx.AsyncClient:
    """One provider's shared, bounded HTTP client (closed by `serve` on shutdown)."""
    settings = HttpSettings(connect=connect, read=read, max_connections=max_connections)
    return http_client(base_url, settings)


def openai_max_tokens_field(base_url: str) -> str:
    """OpenAI itself wants `max_completion_tokens` (its reasoning models refuse `max_tokens`);
    OpenAI-compatible servers (vLLM, Ollama, LM Studio) know `max_tokens` best."""
    official = base_url.rstrip("/").startswith("https://api.openai.com")
    return "max_completion_tokens" if official else "max_tokens"


def cache_path(settings: Settings, name: str) -> Path:
    return Path(settings.cache_dir) / name


def embedding_base_url(settings: Settings) -> str:
    return (
        settings.gemini_base_url if settings.embedder_kind == "gemini" else settings.openai_base_url
    )


def embedding_key(settings: Settings) -> ApiKey:
    assert settings.embedding_api_key is not None  # Settings refuses an API embedder without it
    return ApiKey(settings.embedding_api_key.get_secret_value())


def embedding_model(settings: Settings, default: str) -> str:
    return settings.embedding_model or default


def describe_cache(settings: Settings) -> str:
    if settings.cache_mode == "off":
        return "off (CACHE_MODE=off)"
    if settings.cache_mode == "embedded":
        where = f"Qdrant Edge and a local response store under {settings.cache_dir}"
    else:
        where = (
            f"Qdrant at {settings.qdrant_url} ({settings.qdrant_collection}), "
            f"Redis at {settings.redis_addr}"
        )
    return f"{settings.cache_mode}: {where}; embedder {settings.embedder_kind}"


async def start_cache(container: Container) -> asyncio.Task[None] | None:
    """Warms the cache up and starts its sweeper. A backend that is down at startup is not
    fatal (the cache fails open and recovers); a vector collection that cannot hold our vectors
    is, since it would silently disable the cache."""
    settings: Settings = container.settings()
    log.info("cache: %s", describe_cache(settings))
    cache = container.cache()
    if not isinstance(cache, SemanticCache):
        return None
    try:
        embedder = container.embedder()
        if isinstance(embedder, LocalMiniLMEmbedder):  # load and warm up: not on a request
            await embedder.load()
            await embedder.embed(["warm-up"])
        await cache.prepare()
    except IncompatibleIndex:
        raise
    except Exception as error:
        log.warning(
            "cache backend unavailable at startup (%s); serving without it until it recovers",
            type(error).__name__,
        )
    return asyncio.create_task(
        cache.sweep_every(container.sleeper(), settings.cache_sweep_interval)
    )


def build_tracer_provider() -> trace.TracerProvider:
    """The SDK when OTEL_* configure an exporter, else a no-op provider (never None: a
    Singleton that returns None is built again on every call)."""
    return setup_tracing("llm-proxy", enabled=True) or trace.NoOpTracerProvider()


def build_tracer(provider: trace.TracerProvider) -> Tracer:
    return OtelTracer(provider) if isinstance(provider, TracerProvider) else NullTracer()


def build_tracing_interceptor(provider: trace.TracerProvider) -> TracingInterceptor | None:
    """Tracing off costs nothing on the hot path: no interceptor at all."""
    return TracingInterceptor(provider) if isinstance(provider, TracerProvider) else None


def build_ops_server(
    settings: Settings,
    metrics: PrometheusMetrics,
    server: GrpcServer,
    router: ModelRouter,
    cache: ResponseCache | None,
) -> OpsServer:
    """/readyz: serving and routable decide; the cache backends are reported, never required
    (the cache fails open: a down Redis must not take every replica out of the Service)."""
    backends = {}
    if isinstance(cache, SemanticCache):
        states = cache.states
        backends = {name: (lambda name=name: states[name]) for name in states}
    readiness = Readiness(
        serving=lambda: server.serving,
        routable=lambda: bool(router.routable()),
        backends=backends,
    )
    return OpsServer(metrics, readiness, host=settings.grpc_host, port=settings.metrics_port)


def build_router(settings: Settings, upstreams: Mapping[str, Upstream]) -> ModelRouter:
    return ModelRouter(upstreams.keys(), settings.model_routes)


class Container(containers.DeclarativeContainer):
    settings = providers.Dependency(instance_of=Settings)

    clock = providers.Singleton(SystemClock)
    sleeper = providers.Singleton(AsyncioSleeper)
    random = providers.Singleton(SystemRandom)
    metrics = providers.Singleton(
        PrometheusMetrics, models=providers.Callable(tuple, settings.provided.model_routes)
    )
    tracer_provider = providers.Singleton(build_tracer_provider)
    tracer = providers.Singleton(build_tracer, tracer_provider)

    openai_http = providers.Singleton(
        upstream_client,
        settings.provided.openai_base_url,
        settings.provided.openai_connect_timeout,
        settings.provided.openai_read_timeout,
        settings.provided.upstream_max_connections,
    )
    gemini_http = providers.Singleton(
        upstream_client,
        settings.provided.gemini_base_url,
        settings.provided.gemini_connect_timeout,
        settings.provided.gemini_read_timeout,
        settings.provided.upstream_max_connections,
    )
    openai = providers.Singleton(
        OpenAIProvider,
        openai_http,
        base_url=settings.provided.openai_base_url,
        stream_idle_timeout=settings.provided.openai_stream_idle_timeout,
        max_response_bytes=settings.provided.max_response_bytes,
        max_tokens_field=providers.Callable(
            openai_max_tokens_field, settings.provided.openai_base_url
        ),
    )
    gemini = providers.Singleton(
        GeminiProvider,
        gemini_http,
        base_url=settings.provided.gemini_base_url,
        stream_idle_timeout=settings.provided.gemini_stream_idle_timeout,
        max_response_bytes=settings.provided.max_response_bytes,
    )
    provider_adapters: providers.Provider[dict[str, Provider]] = providers.Dict(
        openai=openai, gemini=gemini
    )
    embedding_http = providers.Singleton(
        http_client,
        providers.Callable(embedding_base_url, settings),
        providers.Factory(HttpSettings, read=10.0),
    )
    embedder = providers.Selector(
        settings.provided.embedder_kind,
        local=providers.Singleton(LocalMiniLMEmbedder),
        openai=providers.Singleton(
            OpenAIEmbedder,
            embedding_http,
            providers.Callable(embedding_key, settings),
            base_url=settings.provided.openai_base_url,
            model=providers.Callable(embedding_model, settings, "text-embedding-3-small"),
        ),
        gemini=providers.Singleton(
            GeminiEmbedder,
            embedding_http,
            providers.Callable(embedding_key, settings),
            base_url=settings.provided.gemini_base_url,
            model=providers.Callable(embedding_model, settings, "gemini-embedding-001"),
        ),
    )
    vector_index = providers.Selector(
        settings.provided.cache_mode,
        embedded=providers.Singleton(
            EdgeIndex, providers.Callable(cache_path, settings, "vectors")
        ),
        remote=providers.Singleton(
            QdrantIndex,
            providers.Singleton(AsyncQdrantClient, url=settings.provided.qdrant_url, timeout=5),
            settings.provided.qdrant_collection,
        ),
    )
    response_store = providers.Selector(
        settings.provided.cache_mode,
        embedded=providers.Singleton(
            EmbeddedStore,
            providers.Callable(cache_path, settings, "responses"),
            max_entries=settings.provided.cache_max_entries,
        ),
        remote=providers.Singleton(
            RedisStore,
            providers.Singleton(
                redis_client, settings.provided.redis_addr, settings.provided.cache_timeout
            ),
        ),
    )
    semantic_cache = providers.Singleton(
        SemanticCache,
        embedder,
        vector_index,
        response_store,
        providers.Factory(
            CachePolicy,
            threshold=settings.provided.similarity_threshold,
            ttl=settings.provided.cache_ttl,
            timeout=settings.provided.cache_timeout,
        ),
        clock,
        metrics,
        tracer,
    )
    cache: providers.Provider[ResponseCache | None] = providers.Selector(
        settings.provided.cache_mode,
        embedded=semantic_cache,
        remote=semantic_cache,
        off=providers.Object(None),
    )

    upstreams = providers.Singleton(build_upstreams, settings, provider_adapters)
    router = providers.Singleton(build_router, settings, upstreams)
    backoff = providers.Singleton(
        BackoffPolicy,
        max_retries=settings.provided.max_retries,
        wait_initial=settings.provided.retry_wait_initial,
        wait_max=settings.provided.retry_wait_max,
    )
    inference = providers.Singleton(
        InferenceService,
        router=router,
        upstreams=upstreams,
        cache=cache,
        backoff=backoff,
        request_timeout=settings.provided.request_timeout,
        upstream_timeout=settings.provided.attempt_timeout,
        clock=clock,
        sleeper=sleeper,
        random=random,
        metrics=metrics,
        tracer=tracer,
    )
    servicer = providers.Singleton(InferenceServicer, inference, metrics, clock)
    grpc_server = providers.Singleton(
        GrpcServer,
        servicer,
        host=settings.provided.grpc_host,
        port=settings.provided.grpc_port,
        max_message_bytes=settings.provided.max_request_bytes,
        auth_tokens=settings.provided.client_tokens.call(),
        tracing=providers.Callable(build_tracing_interceptor, tracer_provider),
    )
    ops_server = providers.Singleton(
        build_ops_server, settings, metrics, grpc_server, router, cache
    )


async def serve(container: Container, stop: asyncio.Event) -> None:
    """Runs until `stop` is set, then drains in-flight calls within SHUTDOWN_GRACE."""
    settings: Settings = container.settings()
    container.metrics().watch(container.upstreams(), container.clock().now)
    sweeper = await start_cache(container)
    server: GrpcServer = container.grpc_server()
    ops: OpsServer = container.ops_server()
    metrics_port = await ops.start()
    port = await server.start()
    routable = container.router().routable()
    log.info(
        "serving inferenceproxy.InferenceService on %s:%d (metrics and health on :%d); "
        "routable models: %s",
        settings.grpc_host,
        port,
        metrics_port,
        ", ".join(routable) or "none (no provider has API keys)",
    )
    try:
        await stop.wait()
        log.info("shutting down: draining in-flight calls for up to %.1fs", settings.shutdown_grace)
    finally:
        await server.stop(settings.shutdown_grace)
        await container.inference().drain()
        await ops.stop()
        if sweeper is not None:
            sweeper.cancel()
        cache = container.cache()
        if isinstance(cache, SemanticCache):
            await cache.close()
        for client in (container.openai_http(), container.gemini_http()):
            await client.aclose()
        tracing = container.tracer_provider()
        if isinstance(tracing, TracerProvider):
            tracing.shutdown()


SIMULATED_KEYS = {
    "openai_api_keys": "sim-openai-key-1,sim-openai-key-2",
    "gemini_api_keys": "sim-gemini-key-1,sim-gemini-key-2",
}


def simulated(settings: Settings, simulator: RunningSimulator) -> Settings:
    """The settings pointed at a local upstream simulator, with its demo keys (never real ones)."""
    return load_settings(
        **{
            **settings.model_dump(exclude={"openai_api_keys", "gemini_api_keys"}),
            **SIMULATED_KEYS,
            "openai_base_url": simulator.openai_base_url,
            "gemini_base_url": simulator.gemini_base_url,
        }
    )


DEMO_SIMULATOR = SimulatorConfig(unary_latency_s=0.3, ttft_s=0.15, chunk_delay_s=0.03)


async def _run(settings: Settings, with_simulator: bool) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with AsyncExitStack() as stack:
        if with_simulator:
            simulator = await stack.enter_async_context(running_simulator(DEMO_SIMULATOR))
            settings = simulated(settings, simulator)
            log.warning(
                "UPSTREAM SIMULATOR ENABLED (--simulator): answers are synthetic, from %s; "
                "OpenAI and Gemini are not contacted and configured API keys are not used",
                simulator.base_url,
            )
        await serve(Container(settings=settings), stop)


def calibrate(path: Path, thresholds: str) -> int:
    try:
        settings = load_settings(cache_mode=os.environ.get("CACHE_MODE", "embedded"))
        pairs = read_pairs(path)
        start, stop, step = (float(part) for part in thresholds.split(":"))
    except (ConfigError, OSError, ValueError, KeyError) as error:
        print(f"llm-proxy calibrate: {error}", file=sys.stderr)
        return 2
    levels = [round(start + i * step, 4) for i in range(round((stop - start) / step) + 1)]
    container = Container(settings=settings)

    async def run() -> list[ThresholdReport]:
        try:
            return report(await score(container.embedder(), pairs), levels)
        finally:
            await container.embedding_http().aclose()

    rows = asyncio.run(run())
    positives = sum(p.should_hit for p in pairs)
    print(
        f"embedder {settings.embedder_kind}; {positives} should-hit and "
        f"{len(pairs) - positives} should-not-hit pairs from {path}"
    )
    print("threshold  hit rate  false-hit rate  false-hit rate without the guard")
    for row in rows:
        print(
            f"{row.threshold:9.2f}  {row.hit_rate:8.1%}  {row.false_hit_rate:14.1%}  "
            f"{row.false_hits_without_guard:32.1%}"
        )
    return 0


def read_pairs(path: Path) -> list[LabelledPair]:
    pairs = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            item = json.loads(line)
            if not isinstance(item.get("should_hit"), bool):
                raise ValueError(f"{path}:{number}: should_hit must be true or false")
            pairs.append(LabelledPair(str(item["a"]), str(item["b"]), item["should_hit"]))
    return pairs


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llm-proxy",
        description="gRPC inference proxy for OpenAI and Gemini. Configured by environment "
        "variables (see the README's settings table).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser(
        "serve",
        help="run the gRPC server",
        description="Run inferenceproxy.InferenceService on GRPC_PORT until SIGTERM or SIGINT, "
        "then drain in-flight calls for up to SHUTDOWN_GRACE.",
    )
    serve_cmd.add_argument(
        "--simulator",
        action="store_true",
        help="answer through a built-in upstream simulator on loopback instead of OpenAI and "
        "Gemini (synthetic answers, demo keys; for a first run, demos and tests)",
    )
    simulate_cmd = commands.add_parser(
        "simulate",
        help="run only the upstream simulator (OpenAI- and Gemini-compatible HTTP)",
        description="Serve OpenAI- and Gemini-compatible endpoints with synthetic answers, "
        "latency and fault injection; see docs/simulator.md.",
    )
    simulator_cli.add_arguments(simulate_cmd)
    calibrate_cmd = commands.add_parser(
        "calibrate",
        help="show hit and false-hit rates of similarity thresholds on labelled prompt pairs",
        description='Read JSON lines {"a": ..., "b": ..., "should_hit": true|false} and '
        "print, for the configured embedder (EMBEDDER, EMBEDDING_MODEL) and the cache's guard, "
        "the share of should-hit pairs that hit and of should-not-hit pairs that hit, per "
        "threshold. Use it to choose SIMILARITY_THRESHOLD.",
    )
    calibrate_cmd.add_argument("pairs", type=Path, help="JSONL file of labelled pairs")
    calibrate_cmd.add_argument(
        "--thresholds",
        default="0.80:0.99:0.01",
        help="start:stop:step, inclusive (default %(default)s)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "simulate":
        return simulator_cli.run(args)
    if args.command == "calibrate":
        return calibrate(args.pairs, args.thresholds)
    try:
        settings = load_settings()
    except ConfigError as error:
        print(f"llm-proxy: {error}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format == "json", secrets=settings.secrets())
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per upstream call is noise
    try:
        asyncio.run(_run(settings, args.simulator))
    except IncompatibleIndex as error:
        print(f"llm-proxy: {error}", file=sys.stderr)
        return 2
    return 0


def cli() -> None:
    sys.exit(main())


if __name__ == "__main__":
    cli()
