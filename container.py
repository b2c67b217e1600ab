"""The composition root: settings -> container -> server; `llm-proxy` starts here."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import tempfile
from collections.abc import Mapping
from contextlib import AsyncExitStack
from pathlib import Path

import grpc
import httpx
from dependency_injector import containers, providers
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from qdrant_client import AsyncQdrantClient

from adapters.embedders.gemini import GeminiEmbedder
from adapters.embedders.local import LocalMiniLMEmbedder
from adapters.embedders.openai import OpenAIEmbedder
from adapters.grpc.admission import Admission, ClientAuth, Limits
from adapters.grpc.server import GrpcServer
from adapters.grpc.servicer import InferenceServicer
from adapters.observability import tracing
from adapters.observability.http import OpsServer, Readiness
from adapters.observability.logs import SecretRedactor, configure_logging
from adapters.observability.prometheus import PrometheusMetrics
from adapters.providers import HttpSettings, http_client
from adapters.providers.gemini import GeminiProvider
from adapters.providers.openai import OpenAIProvider
from adapters.settings import ConfigError, Settings, is_loopback, load_settings, redact_url
from adapters.store.embedded import EmbeddedStore
from adapters.store.redis import RedisStore, redis_client
from adapters.system import AsyncioSleeper, SystemClock, SystemRandom
from adapters.vector import IncompatibleIndex
from adapters.vector.edge import EdgeIndex
from adapters.vector.qdrant import QdrantIndex
from application.calibration import MemoEmbedder, ThresholdReport, parse_pairs, render, sweep
from application.inference import InferenceService
from application.ports import Provider, ResponseCache, Tracer
from application.resilience import Upstream
from application.semantic_cache import CachePolicy, SemanticCache
from domain.admission import TenantRateLimit
from domain.backoff import BackoffPolicy
from domain.circuit_breaker import CircuitBreaker
from domain.key_pool import ApiKey, KeyPool
from domain.model import RequestLimits
from domain.routing import ModelRouter
from simulator import RunningSimulator, SimulatorConfig, running_simulator
from simulator import cli as simulator_cli

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
    base_url: str,
    connect: float,
    read: float,
    max_connections: int,
    tracer_provider: trace.TracerProvider,
) -> httpx.AsyncClient:
    """One provider's shared, bounded HTTP client (closed by `serve` on shutdown)."""
    settings = HttpSettings(connect=connect, read=read, max_connections=max_connections)
    return http_client(base_url, settings, tracer_provider)


def openai_max_tokens_field(base_url: str) -> str:
    """OpenAI itself wants `max_completion_tokens` (its reasoning models refuse `max_tokens`);
    OpenAI-compatible servers (vLLM, Ollama, LM Studio) know `max_tokens` best."""
    official = base_url.rstrip("/").startswith("https://api.openai.com")
    return "max_completion_tokens" if official else "max_tokens"


def cache_path(settings: Settings, name: str) -> Path:
    return Path(settings.cache_dir) / name


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
            f"Qdrant at {redact_url(settings.qdrant_url)} ({settings.qdrant_collection}), "
            f"Redis at {redact_url(settings.redis_addr)}"
        )
    return f"{settings.cache_mode}: {where}; embedder {settings.embedder_kind}"


def cache_dir_usable(directory: str) -> bool:
    """CACHE_DIR can be created and written to; if not (a read-only root filesystem with no
    volume mounted there, a path under a file), the proxy serves without a cache."""
    try:
        Path(directory).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as error:
        log.warning(
            "CACHE_DIR=%s is not a writable directory (%s); serving WITHOUT the cache. Mount a "
            "volume there, point CACHE_DIR at one, or set CACHE_MODE=off to silence this",
            directory,
            error.strerror or type(error).__name__,
        )
        return False
    return True


async def start_cache(container: Container) -> asyncio.Task[None] | None:
    """Warms the cache up and starts its sweeper. A backend that is down at startup is not
    fatal (the cache fails open and recovers); a vector collection that cannot hold our vectors
    is, since it would silently disable the cache."""
    settings: Settings = container.settings()
    log.info("cache: %s", describe_cache(settings))
    if settings.cache_mode == "embedded" and not cache_dir_usable(settings.cache_dir):
        container.cache.override(providers.Object(None))
        return None
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


def build_tracer(provider: trace.TracerProvider, settings: Settings) -> Tracer:
    return tracing.build_tracer(provider, SecretRedactor(settings.secrets()).redact)


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS_CERT_FILE / TLS_KEY_FILE, and with TLS_CLIENT_CA_FILE client certificates required
    and verified (mTLS). Settings checked that the files are readable PEM that fit together."""
    if not (settings.tls_cert_file and settings.tls_key_file):
        return None
    ca = settings.tls_client_ca_file
    return grpc.ssl_server_credentials(
        [(Path(settings.tls_key_file).read_bytes(), Path(settings.tls_cert_file).read_bytes())],
        root_certificates=Path(ca).read_bytes() if ca else None,
        require_client_auth=bool(ca),
    )


def build_admission(
    settings: Settings, metrics: PrometheusMetrics, clock: SystemClock
) -> Admission:
    rate = settings.tenant_rate_limit
    limits = Limits(
        max_concurrent=settings.max_concurrent_requests,
        rate=TenantRateLimit(rate, settings.tenant_burst) if rate else None,
    )
    return Admission(ClientAuth(settings.client_tokens()), limits, metrics, clock)


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
    return OpsServer(metrics, readiness, host=settings.host, port=settings.metrics_port)


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
    tracer_provider = providers.Singleton(tracing.build_tracer_provider)
    tracer = providers.Singleton(build_tracer, tracer_provider, settings)

    openai_http = providers.Singleton(
        upstream_client,
        settings.provided.openai_base_url,
        settings.provided.openai_connect_timeout,
        settings.provided.openai_read_timeout,
        settings.provided.upstream_max_connections,
        tracer_provider,
    )
    gemini_http = providers.Singleton(
        upstream_client,
        settings.provided.gemini_base_url,
        settings.provided.gemini_connect_timeout,
        settings.provided.gemini_read_timeout,
        settings.provided.upstream_max_connections,
        tracer_provider,
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
        settings.provided.embedding_url,
        providers.Factory(HttpSettings, read=10.0),
        tracer_provider,
    )
    embedder = providers.Selector(
        settings.provided.embedder_kind,
        local=providers.Singleton(LocalMiniLMEmbedder),
        openai=providers.Singleton(
            OpenAIEmbedder,
            embedding_http,
            providers.Callable(embedding_key, settings),
            base_url=settings.provided.embedding_url,
            model=providers.Callable(embedding_model, settings, "text-embedding-3-small"),
        ),
        gemini=providers.Singleton(
            GeminiEmbedder,
            embedding_http,
            providers.Callable(embedding_key, settings),
            base_url=settings.provided.embedding_url,
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
    servicer = providers.Singleton(
        InferenceServicer,
        inference,
        metrics,
        clock,
        auth=providers.Factory(ClientAuth, settings.provided.client_tokens.call()),
        limits=providers.Factory(
            RequestLimits,
            max_model_name=settings.provided.max_model_name_length,
            max_messages=settings.provided.max_messages,
        ),
    )
    admission = providers.Singleton(build_admission, settings, metrics, clock)
    grpc_server = providers.Singleton(
        GrpcServer,
        servicer,
        host=settings.provided.host,
        port=settings.provided.grpc_port,
        max_message_bytes=settings.provided.max_request_bytes,
        admission=admission,
        tracing=providers.Callable(tracing.build_server_interceptor, tracer_provider),
        credentials=providers.Callable(server_credentials, settings),
    )
    ops_server = providers.Singleton(
        build_ops_server, settings, metrics, grpc_server, router, cache
    )


class StartupError(Exception):
    """The proxy cannot start; the message names the setting to change."""


async def listen(server: GrpcServer, ops: OpsServer, settings: Settings) -> tuple[int, int]:
    try:
        metrics_port = await ops.start()
    except OSError as error:
        raise StartupError(
            f"cannot serve metrics and health on {settings.host}:{settings.metrics_port} "
            f"({error.strerror or error}): is another instance running? Set METRICS_PORT to a "
            "free port"
        ) from None
    try:
        port = await server.start()
    except OSError:
        await ops.stop()
        raise StartupError(
            f"cannot listen for gRPC on {settings.host}:{settings.grpc_port}: the port is in use "
            "(another instance?) or the address is not this machine's. Set GRPC_PORT (and "
            "GRPC_HOST)"
        ) from None
    return port, metrics_port


def warn_if_open(settings: Settings) -> None:
    if settings.authenticates or is_loopback(settings.host):
        return
    log.warning(
        "UNAUTHENTICATED: ALLOW_UNAUTHENTICATED=true and no AUTH_TOKENS or TLS_CLIENT_CA_FILE: "
        "anyone who reaches %s:%d spends the configured API keys. Only run this behind "
        "something that authenticates clients (a service mesh, a gateway)",
        settings.host,
        settings.grpc_port,
    )


async def serve(container: Container, stop: asyncio.Event) -> None:
    """Runs until `stop` is set, then drains in-flight calls within SHUTDOWN_GRACE. Raises
    StartupError when a port cannot be bound."""
    settings: Settings = container.settings()
    warn_if_open(settings)
    container.metrics().watch(container.upstreams(), container.clock().now)
    sweeper = await start_cache(container)
    server: GrpcServer = container.grpc_server()
    ops: OpsServer = container.ops_server()
    try:
        port, metrics_port = await listen(server, ops, settings)
    except StartupError:
        if sweeper is not None:
            sweeper.cancel()
        await close_clients(container)
        raise
    routable = container.router().routable()
    log.info(
        "serving inferenceproxy.InferenceService on %s:%d (%s; metrics and health on :%d); "
        "routable models: %s",
        settings.host,
        port,
        describe_security(settings),
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
        await close_clients(container)


def describe_security(settings: Settings) -> str:
    tls = "plaintext"
    if settings.tls_cert_file:
        tls = "mTLS" if settings.tls_client_ca_file else "TLS"
    tokens = len(settings.auth_tokens)
    auth = f"{tokens} client token(s)" if tokens else "no client tokens"
    return f"{tls}, {auth}"


async def close_clients(container: Container) -> None:
    cache = container.cache()
    if isinstance(cache, SemanticCache):
        await cache.close()
    for client in (container.openai_http(), container.gemini_http()):
        await client.aclose()
    tracer_provider = container.tracer_provider()
    if isinstance(tracer_provider, TracerProvider):
        tracer_provider.shutdown()


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
            "embedding_base_url": (
                simulator.gemini_base_url
                if settings.embedder_kind == "gemini"
                else simulator.openai_base_url
            ),
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


def calibrate(path: Path, thresholds: str, half: str | None = None) -> int:
    """The labelled pairs through a real cache (embedded backends in a temporary directory, the
    configured embedder): rates per category at SIMILARITY_THRESHOLD, then per threshold."""
    try:
        settings = load_settings(cache_mode="embedded")
        pairs = parse_pairs(path.read_text(), str(path), half)
        start, stop, step = (float(part) for part in thresholds.split(":"))
    except (ConfigError, OSError, ValueError, KeyError) as error:
        print(f"llm-proxy calibrate: {error}", file=sys.stderr)
        return 2
    default = settings.similarity_threshold
    levels = [round(start + i * step, 4) for i in range(round((stop - start) / step) + 1)]
    with tempfile.TemporaryDirectory() as directory:
        container = Container(settings=settings.model_copy(update={"cache_dir": directory}))
        caches: list[SemanticCache] = []

        def cache_at(threshold: float) -> SemanticCache:
            policy = CachePolicy(threshold=threshold, ttl=3600.0, timeout=120.0)
            caches.append(SemanticCache(
                embedder, container.vector_index(), container.response_store(), policy,
                container.clock(), container.metrics(), container.tracer(),
            ))  # fmt: skip
            return caches[-1]

        embedder = MemoEmbedder(container.embedder())

        async def run() -> list[ThresholdReport]:
            try:
                await embedder.prefill(pairs)
                return await sweep(cache_at, embedder, pairs, [default, *levels])
            finally:
                await container.embedding_http().aclose()
                if caches:
                    await caches[0].close()  # they share the index and the store

        try:
            rows = asyncio.run(run())
        except Exception as error:  # the embedder (an API) failed: say so, no traceback
            print(f"llm-proxy calibrate: embedding failed: {error}", file=sys.stderr)
            return 1
    if any(state == "down" for cache in caches for state in cache.states.values()):
        print("llm-proxy calibrate: a cache backend failed; the figures would be wrong",
              file=sys.stderr)  # fmt: skip
        return 1
    print(f"embedder {settings.embedder_kind}; {len(pairs)} pairs from {path}"
          + (f" (half {half})" if half else ""))  # fmt: skip
    print(render(rows[0], rows[1:]))
    return 0


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
        description="Run inferenceproxy.InferenceService on GRPC_HOST:GRPC_PORT until SIGTERM "
        "or SIGINT, then drain in-flight calls for up to SHUTDOWN_GRACE. Without AUTH_TOKENS "
        "(or mTLS) it listens on loopback only; see docs/security.md.",
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
        help="show the cache's hit and false-hit rates on labelled prompt pairs",
        description='Read JSON lines {"a": ..., "b": ..., "should_hit": true|false, '
        '"category": ...}, store each "a" in a fresh cache (embedded backends in a temporary '
        'directory, the configured EMBEDDER and EMBEDDING_MODEL) and look "b" up, as the proxy '
        "does. Print the share of should-hit pairs that hit and of must-not pairs that hit, per "
        "category at SIMILARITY_THRESHOLD, then per threshold. Use it to choose "
        "SIMILARITY_THRESHOLD.",
    )
    calibrate_cmd.add_argument("pairs", type=Path, help="JSONL file of labelled pairs")
    calibrate_cmd.add_argument(
        "--thresholds",
        default="0.80:0.99:0.01",
        help="start:stop:step, inclusive (default %(default)s)",
    )
    calibrate_cmd.add_argument(
        "--half", help='only the pairs whose "half" field has this value (e.g. tune, check)'
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "simulate":
        return simulator_cli.run(args)
    if args.command == "calibrate":
        return calibrate(args.pairs, args.thresholds, args.half)
    try:
        settings = load_settings()
    except ConfigError as error:
        print(f"llm-proxy: {error}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format == "json", secrets=settings.secrets())
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per upstream call is noise
    try:
        asyncio.run(_run(settings, args.simulator))
    except (IncompatibleIndex, StartupError, ConfigError) as error:
        print(f"llm-proxy: {error}", file=sys.stderr)
        return 2
    return 0


def cli() -> None:
    sys.exit(main())


if __name__ == "__main__":
    cli()
