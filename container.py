"""The composition root: Settings -> the object graph and the resources that start and stop it.

An adapter with heavy dependencies (numpy, tokenizers, Qdrant, Redis) is imported inside the small
factory that builds it, so a process imports only what its CACHE_MODE and EMBEDDER wire.
Resources are the only providers that depend on resources: they sit on top of the graph (the trap
of a Singleton turning into a Future when it depends on an async Resource never arises)."""

from __future__ import annotations

import operator
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
from dependency_injector import containers, providers
from opentelemetry import trace

from adapters.inbound.admission import ClientAuth
from adapters.inbound.grpc.admission import Admission
from adapters.inbound.grpc.server import GrpcServer
from adapters.inbound.grpc.servicer import InferenceServicer
from adapters.inbound.http.app import OpenAIApi
from adapters.outbound.observability import tracing
from adapters.outbound.observability.logs import SecretRedactor
from adapters.outbound.observability.prometheus import PrometheusMetrics
from adapters.outbound.providers import HttpSettings, http_client
from adapters.outbound.providers.anthropic import AnthropicProvider
from adapters.outbound.providers.gemini import GeminiProvider
from adapters.outbound.providers.openai import OpenAIProvider, max_tokens_field_for
from adapters.outbound.state import LocalCooldowns, LocalRateLimiter, State
from adapters.process.lifecycle import (
    VECTORS,
    build_gate,
    build_http_server,
    build_ops_server,
    build_router,
    cache_kind,
    grpc_connection_limits,
    listening_ops,
    open_clients,
    running_cache,
    server_credentials,
    serving_grpc,
    serving_http,
    state_dir,
    using_state,
)
from adapters.process.settings import Settings, redact_url
from adapters.process.system import AsyncioSleeper, SystemClock, SystemRandom
from application.embeddings import EmbeddingService
from application.inference import InferenceService
from application.metering import Metering
from application.models import ModelCatalog
from application.ports import Embedder, Provider, ResponseCache, Tracer, VectorIndex
from application.resilience import Upstream
from application.semantic_cache import CachePolicy, SemanticCache
from domain.admission import TenantRateLimit
from domain.backoff import BackoffPolicy
from domain.cache_policy import point_id
from domain.circuit_breaker import CircuitBreaker
from domain.key_pool import ApiKey, KeyPool
from domain.model import RequestLimits
from domain.same_question import QuestionJudge


def build_upstreams(settings: Settings, adapters: Mapping[str, Provider]) -> dict[str, Upstream]:
    """A key pool and a breaker for every provider that has an adapter and at least one key."""
    s = settings
    return {
        name: Upstream(
            adapter,
            KeyPool(name, [ApiKey(key) for key in s.api_keys(name)], s.key_cooldown_default),
            CircuitBreaker(name, s.cb_failure_threshold, s.cb_cooldown, s.cb_half_open_probes),
        )
        for name, adapter in adapters.items()
        if s.api_keys(name)
    }


def api_embedder(kind: str, client: httpx.AsyncClient, settings: Settings) -> Embedder:
    from adapters.outbound.embedders import gemini, openai

    assert settings.embedding_api_key is not None  # Settings refuses an API embedder without it
    module = openai if kind == "openai" else gemini
    return (openai.OpenAIEmbedder if kind == "openai" else gemini.GeminiEmbedder)(
        client,
        ApiKey(settings.embedding_api_key.get_secret_value()),
        base_url=settings.embedding_url,
        model=settings.embedding_model or module.DEFAULT_MODEL,
        dimensions=settings.embedding_dimensions,
    )


def question_judge() -> QuestionJudge:
    from adapters.outbound.lexicon import english_lexicon

    return QuestionJudge(english_lexicon())


def local_embedder(settings: Settings) -> Embedder:
    from adapters.outbound.embedders.local import LocalMiniLMEmbedder

    # a lookup arriving during a pass of the index backlog waits a fifth of its budget at most
    return LocalMiniLMEmbedder(
        background_pass=settings.cache_timeout / 5,
        max_busy=settings.cache_embed_max_cpu,
        nice=settings.cache_embed_nice,
    )


def edge_index(settings: Settings, index_socket: str | None) -> Any:
    """The shard in this process, or (WORKERS > 1) the one the index process serves to all."""
    if index_socket is not None:
        from adapters.outbound.vector.shared import SharedIndex

        return SharedIndex(index_socket)
    from adapters.outbound.vector.edge import EdgeIndex

    return EdgeIndex(Path(settings.cache_dir) / VECTORS, max_points=settings.cache_max_entries)


def qdrant_index(settings: Settings) -> Any:
    from qdrant_client import AsyncQdrantClient

    from adapters.outbound.vector.qdrant import QdrantIndex

    client = AsyncQdrantClient(url=settings.qdrant_url, timeout=5)
    return QdrantIndex(client, settings.qdrant_collection)


def embedded_store(settings: Settings, index: VectorIndex) -> Any:
    """CACHE_MAX_ENTRIES bounds the answers and, through their evictions, the vectors."""
    from adapters.outbound.store.embedded import EmbeddedStore

    async def forget_vectors(keys: list[str]) -> None:
        await index.delete([point_id(key) for key in keys])

    return EmbeddedStore(
        Path(settings.cache_dir) / "responses", max_entries=settings.cache_max_entries,
        on_evict=forget_vectors,
    )  # fmt: skip


def redis_store(settings: Settings) -> Any:
    from adapters.outbound.store.redis import RedisStore, redis_client

    return RedisStore(redis_client(settings.redis_addr, settings.cache_timeout))


def local_state(settings: Settings, clock: SystemClock) -> State:
    from adapters.outbound.state.sqlite import SqliteLedger

    directory = state_dir(settings)
    rate, burst = settings.tenant_rate_limit, settings.tenant_burst
    return State(
        LocalCooldowns(),
        SqliteLedger(directory),
        LocalRateLimiter(TenantRateLimit(rate, burst), clock) if rate else None,
        f"local: usage in {directory}" if directory else "local: usage in memory",
    )


def redis_state(settings: Settings, clock: SystemClock, metrics: PrometheusMetrics) -> State:
    from adapters.outbound.state import redis as shared
    from adapters.outbound.store.redis import redis_client

    client = redis_client(settings.redis_addr, settings.state_timeout)
    reach = shared.Reachability(settings.state_timeout, clock, metrics)
    rate, burst = settings.tenant_rate_limit, settings.tenant_burst
    limiter = None
    if rate:
        local = LocalRateLimiter(TenantRateLimit(rate, burst), clock)
        limiter = shared.RedisRateLimiter(client, reach, rate, burst, local)
    return State(
        shared.RedisCooldowns(client, reach),
        shared.RedisLedger(client, reach),
        limiter,
        f"redis at {redact_url(settings.redis_addr)} (key cooldowns, tenant rate limits, usage)",
    )


def build_tracer(provider: trace.TracerProvider, settings: Settings) -> Tracer:
    return tracing.build_tracer(provider, SecretRedactor(settings.secrets()).redact)


class Container(containers.DeclarativeContainer):
    settings = providers.Dependency(instance_of=Settings)
    s = settings.provided
    # WORKERS > 1: this worker's number; it shares its ports with the others (SO_REUSEPORT)
    worker: providers.Provider[int | None] = providers.Object(None)
    reuse_port = providers.Callable(operator.is_not, worker, None)
    # WORKERS > 1, embedded cache: the unix socket of the process that serves the vector index
    index_socket: providers.Provider[str | None] = providers.Object(None)

    clock = providers.Singleton(SystemClock)
    sleeper = providers.Singleton(AsyncioSleeper)
    random = providers.Singleton(SystemRandom)
    metrics = providers.Singleton(
        PrometheusMetrics, models=s.configured_models, fallback_models=s.configured_models,
        tenants=s.tenant_names, multiprocess_dir=s.prometheus_multiproc_dir,
    )  # fmt: skip
    tracer_provider = providers.Singleton(tracing.build_tracer_provider)
    tracer = providers.Singleton(build_tracer, tracer_provider, settings)

    openai_http = providers.Singleton(
        http_client, s.openai_base_url,
        providers.Factory(HttpSettings, connect=s.openai_connect_timeout,
                          read=s.openai_read_timeout, max_connections=s.upstream_max_connections),
        tracer_provider,
    )  # fmt: skip
    gemini_http = providers.Singleton(
        http_client, s.gemini_base_url,
        providers.Factory(HttpSettings, connect=s.gemini_connect_timeout,
                          read=s.gemini_read_timeout, max_connections=s.upstream_max_connections),
        tracer_provider,
    )  # fmt: skip
    anthropic_http = providers.Singleton(
        http_client, s.anthropic_base_url,
        providers.Factory(HttpSettings, connect=s.anthropic_connect_timeout,
                          read=s.anthropic_read_timeout,
                          max_connections=s.upstream_max_connections),
        tracer_provider,
    )  # fmt: skip
    openai = providers.Singleton(
        OpenAIProvider, openai_http, base_url=s.openai_base_url,
        stream_idle_timeout=s.openai_stream_idle_timeout, max_response_bytes=s.max_response_bytes,
        max_tokens_field=providers.Callable(max_tokens_field_for, s.openai_base_url),
    )  # fmt: skip
    gemini = providers.Singleton(
        GeminiProvider, gemini_http, base_url=s.gemini_base_url,
        stream_idle_timeout=s.gemini_stream_idle_timeout, max_response_bytes=s.max_response_bytes,
    )  # fmt: skip
    anthropic = providers.Singleton(
        AnthropicProvider, anthropic_http, base_url=s.anthropic_base_url,
        default_max_tokens=s.anthropic_max_tokens,
        stream_idle_timeout=s.anthropic_stream_idle_timeout,
        max_response_bytes=s.max_response_bytes,
    )  # fmt: skip
    provider_adapters: providers.Provider[dict[str, Provider]] = providers.Dict(
        openai=openai, gemini=gemini, anthropic=anthropic
    )

    embedding_http = providers.Singleton(
        http_client, s.embedding_url, providers.Factory(HttpSettings, read=10.0), tracer_provider
    )
    embedder = providers.Selector(
        s.embedder_kind,
        local=providers.Singleton(local_embedder, settings),
        openai=providers.Singleton(api_embedder, "openai", embedding_http, settings),
        gemini=providers.Singleton(api_embedder, "gemini", embedding_http, settings),
    )
    vector_index = providers.Selector(
        s.cache_mode,
        embedded=providers.Singleton(edge_index, settings, index_socket),
        remote=providers.Singleton(qdrant_index, settings),
    )
    response_store = providers.Selector(
        s.cache_mode,
        embedded=providers.Singleton(embedded_store, settings, vector_index),
        remote=providers.Singleton(redis_store, settings),
    )
    judge = providers.Singleton(question_judge)
    semantic_cache = providers.Singleton(
        SemanticCache, embedder, vector_index, response_store,
        providers.Factory(CachePolicy, threshold=s.similarity_threshold, ttl=s.cache_ttl,
                          timeout=s.cache_timeout, index_backlog=s.cache_index_backlog),
        judge, clock, metrics, tracer,
    )  # fmt: skip
    kind = providers.Singleton(cache_kind, settings)
    cache: providers.Provider[ResponseCache | None] = providers.Selector(
        kind, embedded=semantic_cache, remote=semantic_cache, off=providers.Object(None)
    )
    cache_embedder = providers.Selector(
        kind, embedded=embedder, remote=embedder, off=providers.Object(None)
    )

    state: providers.Provider[State] = providers.Selector(
        s.state_backend,
        local=providers.Singleton(local_state, settings, clock),
        redis=providers.Singleton(redis_state, settings, clock, metrics),
    )
    metering = providers.Singleton(Metering, state.provided.ledger, s.budgets, clock, metrics)

    upstreams = providers.Singleton(build_upstreams, settings, provider_adapters)
    router = providers.Singleton(build_router, settings, providers.Callable(list, upstreams))
    backoff = providers.Singleton(
        BackoffPolicy, max_retries=s.max_retries, wait_initial=s.retry_wait_initial,
        wait_max=s.retry_wait_max,
    )  # fmt: skip
    inference = providers.Singleton(
        InferenceService, router=router, upstreams=upstreams, cache=cache, backoff=backoff,
        request_timeout=s.request_timeout, upstream_timeout=s.attempt_timeout, clock=clock,
        sleeper=sleeper, random=random, metrics=metrics, tracer=tracer,
        cooldowns=state.provided.cooldowns, metering=metering,
    )  # fmt: skip
    limits = providers.Singleton(
        RequestLimits, max_model_name=s.max_model_name_length, max_messages=s.max_messages
    )
    gate = providers.Singleton(build_gate, settings, metrics, clock, state.provided.rate)
    servicer = providers.Singleton(
        InferenceServicer, inference, metrics, clock,
        auth=providers.Factory(ClientAuth, s.named_tokens.call()), limits=limits,
        metering=metering,
    )  # fmt: skip
    grpc_server = providers.Singleton(
        GrpcServer, servicer, host=s.host, port=s.grpc_port, max_message_bytes=s.max_request_bytes,
        admission=providers.Singleton(Admission, gate),
        tracing=providers.Callable(tracing.build_server_interceptor, tracer_provider),
        credentials=providers.Callable(server_credentials, settings), reuse_port=reuse_port,
        limits=providers.Callable(grpc_connection_limits, settings), grace=s.shutdown_grace,
    )  # fmt: skip
    embeddings = providers.Singleton(
        EmbeddingService, router=router, upstreams=upstreams, backoff=backoff,
        request_timeout=s.request_timeout, upstream_timeout=s.attempt_timeout, clock=clock,
        sleeper=sleeper, random=random, metrics=metrics, tracer=tracer,
        cooldowns=state.provided.cooldowns, metering=metering,
    )  # fmt: skip
    catalog = providers.Singleton(ModelCatalog, router, upstreams, clock)
    openai_api = providers.Singleton(
        OpenAIApi, inference, catalog, embeddings, gate, metrics, clock, limits=limits,
        metering=metering,
        max_request_bytes=s.max_request_bytes, tracer_provider=tracer_provider,
        body_timeout=s.body_timeout, max_buffered_bytes=s.max_buffered_bytes,
        allowed_origins=s.http_allowed_origins, check_host=s.checks_host,
    )  # fmt: skip
    http_server = providers.Singleton(build_http_server, settings, openai_api, reuse_port)
    ops_server = providers.Singleton(
        build_ops_server, settings, metrics, grpc_server, router, cache, reuse_port
    )

    clients = providers.Resource(
        open_clients, tracer_provider, openai_http, gemini_http, anthropic_http,
        providers.Selector(s.embedder_kind, local=providers.Object(None), openai=embedding_http,
                           gemini=embedding_http),
    )  # fmt: skip
    state_open = providers.Resource(using_state, clients, state)
    cache_running = providers.Resource(
        running_cache, state_open, settings, cache, cache_embedder, sleeper
    )
    ops_running = providers.Resource(
        listening_ops, cache_running, ops_server, settings, metrics, sleeper
    )
    grpc_running = providers.Resource(serving_grpc, ops_running, grpc_server, inference, settings)
    http_running = providers.Resource(
        serving_http, grpc_running, http_server, grpc_server, settings
    )
