"""How the proxy process starts: checks and wiring helpers for the composition root, then the
resources in startup order, as async generators for dependency-injector's `Resource` providers.
Each takes the one before it as its first argument, so starting the last starts them all in order
and `shutdown_resources()` stops them in reverse: HTTP and gRPC (drained side by side) -> ops
server -> cache -> clients -> tracer provider."""

from __future__ import annotations

import asyncio
import logging
import ssl
import tempfile
from collections.abc import AsyncIterator, Iterable
from contextlib import suppress
from pathlib import Path

import grpc
import httpx
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from adapters.inbound.admission import ClientAuth, Gate, Limits
from adapters.inbound.grpc.server import ConnectionLimits as GrpcConnectionLimits
from adapters.inbound.grpc.server import GrpcServer
from adapters.inbound.http.app import OpenAIApi
from adapters.inbound.http.server import ConnectionLimits, HttpServer
from adapters.outbound.observability.http import OpsServer, Readiness
from adapters.outbound.observability.prometheus import PrometheusMetrics
from adapters.outbound.state import State
from adapters.outbound.vector import IncompatibleIndex
from adapters.process.settings import Settings, redact_url
from adapters.process.system import AsyncioSleeper, SystemClock
from application.inference import InferenceService
from application.ports import Embedder, RateLimiter, ResponseCache
from application.semantic_cache import SemanticCache
from domain.routing import ModelRouter

log = logging.getLogger("llm_proxy")
SHUTDOWN_INDEXING = 5.0  # seconds the index backlog may take at shutdown, at most


VECTORS = "vectors"  # the embedded vector index's directory under CACHE_DIR


class StartupError(Exception):
    """The proxy cannot start; the message names the setting to change."""


def cache_kind(settings: Settings) -> str:
    """CACHE_MODE, or `off` when the embedded cache's CACHE_DIR cannot be created and written to
    (a read-only root filesystem, a path under a file): the proxy then serves without a cache."""
    if settings.cache_mode != "embedded":
        return settings.cache_mode
    try:
        Path(settings.cache_dir).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=settings.cache_dir):
            pass
    except OSError as error:
        log.warning(
            "CACHE_DIR=%s is not a writable directory (%s); serving WITHOUT the cache. Mount a "
            "volume there, point CACHE_DIR at one, or set CACHE_MODE=off to silence this",
            settings.cache_dir,
            error.strerror or type(error).__name__,
        )
        return "off"
    return "embedded"


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


def http_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The same TLS (and mTLS) as `server_credentials`, for the HTTP port."""
    if not (settings.tls_cert_file and settings.tls_key_file):
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    if settings.tls_client_ca_file:
        context.load_verify_locations(cafile=settings.tls_client_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def state_dir(settings: Settings) -> Path | None:
    """Where the local usage ledger lives: CACHE_DIR/state, or None (in memory) when it cannot
    be written (a read-only root filesystem), said once."""
    directory = Path(settings.cache_dir) / "state"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as error:
        log.warning(
            "CACHE_DIR=%s is not a writable directory (%s): usage is counted in memory and "
            "forgotten at restart. Mount a volume there, or set STATE_BACKEND=redis",
            settings.cache_dir,
            error.strerror or type(error).__name__,
        )
        return None
    return directory


def build_gate(
    settings: Settings, metrics: PrometheusMetrics, clock: SystemClock, rate: RateLimiter | None
) -> Gate:
    """One per process: both protocols share the tenants' rates and MAX_CONCURRENT_REQUESTS."""
    limits = Limits(max_concurrent=settings.max_concurrent_requests, rate=rate)
    return Gate(ClientAuth(settings.named_tokens()), limits, metrics, clock)


def build_http_server(
    settings: Settings, api: OpenAIApi, reuse_port: bool = False
) -> HttpServer | None:
    """None with HTTP_PORT=0: the OpenAI-compatible API is off. `reuse_port`: share the port
    with other worker processes (SO_REUSEPORT)."""
    if not settings.http_port:
        return None
    return HttpServer(
        api, settings.http_bind_host, settings.http_port,
        ssl_context=http_ssl_context(settings), reuse_port=reuse_port,
        limits=http_connection_limits(settings),
    )  # fmt: skip


def http_connection_limits(settings: Settings) -> ConnectionLimits:
    return ConnectionLimits(
        header_timeout=settings.http_header_timeout,
        idle_timeout=settings.http_idle_timeout,
        max_connections=settings.max_connections,
    )


def grpc_connection_limits(settings: Settings) -> GrpcConnectionLimits:
    return GrpcConnectionLimits(
        max_connections=settings.max_connections,
        idle=settings.grpc_max_connection_idle,
        age=settings.grpc_max_connection_age,
        handshake=settings.http_header_timeout,
    )


def build_router(settings: Settings, providers: Iterable[str]) -> ModelRouter:
    """The router over the providers that have keys. A MODEL_FALLBACKS model whose provider has
    none is left out of its chain, and said so once here."""
    router = ModelRouter(providers, settings.model_routes, fallbacks=settings.model_fallbacks)
    for model, member, provider in router.left_out():
        if member == model:
            log.warning(
                "MODEL_FALLBACKS: %s is served by %s, which has no API keys: requests for it go "
                "straight to its fallbacks",
                model,
                provider,
            )
        else:
            log.warning(
                "MODEL_FALLBACKS: %s is served by %s, which has no API keys: left out of %s's "
                "chain",
                member,
                provider,
                model,
            )
    return router


def build_ops_server(
    settings: Settings, metrics: PrometheusMetrics, server: GrpcServer, router: ModelRouter,
    cache: ResponseCache | None, reuse_port: bool = False,
) -> OpsServer:  # fmt: skip
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
    return OpsServer(
        metrics, readiness, host=settings.host, port=settings.metrics_port, reuse_port=reuse_port
    )


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


async def open_clients(
    tracer_provider: trace.TracerProvider, *clients: httpx.AsyncClient | None
) -> AsyncIterator[None]:
    """Closes the HTTP clients, then flushes the spans they and the requests left."""
    yield
    for client in filter(None, clients):
        await client.aclose()
    if isinstance(tracer_provider, TracerProvider):
        tracer_provider.shutdown()


async def using_state(_clients: None, state: State) -> AsyncIterator[None]:
    log.info("state: %s", state.where)
    try:
        yield
    finally:
        await state.ledger.close()


async def running_cache(
    _clients: None, settings: Settings, cache: SemanticCache | None, embedder: Embedder | None,
    sleeper: AsyncioSleeper,
) -> AsyncIterator[None]:  # fmt: skip
    """Warms the cache up and starts its sweeper and its indexer. A backend that is down at
    startup is not fatal (the cache fails open and recovers); a vector collection that cannot
    hold our vectors is (IncompatibleIndex), since it would silently disable the cache.

    At shutdown (after the listeners drained and the last stores ran) the index backlog gets
    SHUTDOWN_INDEXING seconds at most (less with a shorter SHUTDOWN_GRACE); what is left is
    counted, logged and given up: those answers stay in the exact tier. The bound keeps the stop
    within the supervisor's and Kubernetes' margins past SHUTDOWN_GRACE."""
    log.info("cache: %s", describe_cache(settings))
    if cache is None:
        yield
        return
    try:
        if embedder is not None and hasattr(embedder, "load"):  # the local model: warm it up
            await embedder.load()
            await embedder.embed(["warm-up"])
        await cache.prepare()
    except IncompatibleIndex:
        await cache.close()
        raise
    except Exception as error:
        log.warning(
            "cache backend unavailable at startup (%s); serving without it until it recovers",
            type(error).__name__,
        )
    sweeper = asyncio.create_task(cache.sweep_every(sleeper, settings.cache_sweep_interval))
    indexer = asyncio.create_task(cache.index_forever(sleeper))
    try:
        yield
    finally:
        for task in (sweeper, indexer):
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
        await cache.finish_indexing(min(settings.shutdown_grace, SHUTDOWN_INDEXING))
        await cache.close()


async def serve_vector_index(settings: Settings, socket: str, stop: asyncio.Event) -> None:
    """The vector index process of WORKERS > 1 with the embedded cache (supervisor.py): serves
    CACHE_DIR/vectors on `socket` to the workers until `stop` is set, then closes the shard."""
    from adapters.outbound.vector.edge import EdgeIndex
    from adapters.outbound.vector.shared import IndexServer

    index = EdgeIndex(Path(settings.cache_dir) / VECTORS, max_points=settings.cache_max_entries)
    server = IndexServer(index, socket)
    await server.start()
    log.info("serving the vector index %s to the workers", Path(settings.cache_dir) / VECTORS)
    try:
        await stop.wait()
    finally:
        await server.stop()
        await index.close()


async def listening_ops(
    _cache: None, ops: OpsServer, settings: Settings, metrics: PrometheusMetrics,
    sleeper: AsyncioSleeper,
) -> AsyncIterator[int]:  # fmt: skip
    """With WORKERS > 1, also publishes this worker's breaker and key-pool states every second
    (the other workers' scrapes read them from the shared metrics directory)."""
    try:
        port = await ops.start()
    except OSError as error:
        raise StartupError(
            f"cannot serve metrics and health on {settings.host}:{settings.metrics_port} "
            f"({error.strerror or error}): is another instance running? Set METRICS_PORT to a "
            "free port"
        ) from None
    publisher = asyncio.create_task(_publish_upstreams(metrics, sleeper))
    try:
        yield port
    finally:
        publisher.cancel()
        with suppress(asyncio.CancelledError):
            await publisher
        await ops.stop()


async def _publish_upstreams(metrics: PrometheusMetrics, sleeper: AsyncioSleeper) -> None:
    while metrics.multiprocess:
        metrics.publish_upstreams()
        await sleeper.sleep(1.0)


async def serving_grpc(
    _ops: int, server: GrpcServer, inference: InferenceService, settings: Settings
) -> AsyncIterator[int]:
    """At shutdown: stop accepting, drain in-flight calls within SHUTDOWN_GRACE, then await the
    cache stores still running in the background."""
    try:
        port = await server.start()
    except OSError:
        raise StartupError(
            f"cannot listen for gRPC on {settings.host}:{settings.grpc_port}: the port is in use "
            "(another instance?) or the address is not this machine's. Set GRPC_PORT (and "
            "GRPC_HOST)"
        ) from None
    try:
        yield port
    finally:
        await server.stop()
        await inference.drain()


async def serving_http(
    _grpc: int, server: HttpServer | None, grpc_server: GrpcServer, settings: Settings
) -> AsyncIterator[int]:
    """Started after gRPC. At shutdown both listeners stop accepting at once and drain side by
    side, within one SHUTDOWN_GRACE (in turn they could take twice that, past Kubernetes'
    terminationGracePeriodSeconds); serving_grpc's own stop then finds gRPC stopped. Yields the
    port (0: HTTP_PORT=0, off)."""
    if server is None:
        yield 0
        return
    try:
        port = await server.start(settings.shutdown_grace)
    except OSError as error:
        raise StartupError(
            f"cannot listen for HTTP on {settings.http_bind_host}:{settings.http_port} "
            f"({error.strerror or error}): is another instance running? Set HTTP_PORT to a free "
            "port (0 turns the OpenAI-compatible API off) and HTTP_HOST"
        ) from None
    try:
        yield port
    finally:
        await asyncio.gather(server.stop(), grpc_server.stop())
