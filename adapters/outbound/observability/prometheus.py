"""The `Metrics` port on prometheus-client, in a registry of its own.

The first eight metrics are the predecessor's contract (names, types, labels). Every label value
is bounded: a value outside a label's known set takes one of a few free slots, first come first
served, and becomes "other" when they are gone, so no client input can create series without end.

With WORKERS > 1 (`multiprocess_dir`, PROMETHEUS_MULTIPROC_DIR), every worker writes its values
to files there and any worker's /metrics shows them all (prometheus-client's multiprocess mode):
counters and histograms are summed; `active_requests` is the sum over live workers;
`cache_backend_up` the minimum (0 when any worker's last call failed); `cache_hit_ratio` is
computed from the summed hits and lookups; `circuit_breaker_state` and `key_pool_keys` keep one
series per worker, labelled `pid` (each worker has its own breakers and key pools), refreshed
every second; the process_*/python_* collectors, which would describe one worker only, are off.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Final, Generic, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from application.ports import Metrics
from application.resilience import Upstream
from domain.model import CacheStatus, Usage

OTHER: Final = "other"
NO_PROVIDER: Final = "none"
MAX_LABEL_CHARS: Final = 128
CONTENT_TYPE: Final = CONTENT_TYPE_PLAIN_0_0_4

# Cache hits answer in milliseconds, upstream calls in seconds up to REQUEST_TIMEOUT and beyond.
LATENCY_BUCKETS: Final = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0,
)  # fmt: skip
SIMILARITY_BUCKETS: Final = (0.8, 0.85, 0.9, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99, 1.0)

GRPC_STATUSES: Final = (
    "ok", "cancelled", "unknown", "invalid_argument", "deadline_exceeded", "not_found",
    "already_exists", "permission_denied", "resource_exhausted", "failed_precondition", "aborted",
    "out_of_range", "unimplemented", "internal", "unavailable", "data_loss", "unauthenticated",
)  # fmt: skip
ATTEMPT_OUTCOMES: Final = (
    "success", "aborted", "timeout", "rate_limited", "key_rejected", "upstream_fault",
    "malformed", "proxy_busy", "rejected",
)  # fmt: skip
AUTH_FAILURE_REASONS: Final = ("missing", "malformed", "invalid")
SEMANTIC_SKIP_REASONS: Final = ("beyond_window", "different_question", "embedder_busy")
INDEX_DROP_REASONS: Final = ("full", "failed", "shutdown")
CACHE_BACKENDS: Final = ("cache", "embedder", "vector_index", "response_store")
CACHE_OPERATIONS: Final = ("lookup", "store", "embed", "search", "upsert", "delete", "get", "put")
KNOWN_PROVIDERS: Final = ("openai", "gemini", "anthropic")
HTTP_ROUTES: Final = (
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/models",
    "/v1/models/{model}",
    "/v1/usage",
)
HTTP_CODES: Final = ("200", "400", "401", "404", "405", "413", "429", "499", "500", "503", "504")

M = TypeVar("M", Counter, Gauge, Histogram)


class BoundedLabel:
    """Maps raw values onto at most `len(known) + capacity + 1` label values."""

    def __init__(self, known: Iterable[str] = (), capacity: int = 0) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        self._known = frozenset(known)
        self._admitted: set[str] = set(self._known)
        self._limit = len(self._known) + capacity
        self._lock = threading.Lock()

    def __call__(self, value: str, admit: bool = True) -> str:
        """`admit=False` maps a value that is not yet a label to "other" without using a slot."""
        if value in self._admitted:
            return value
        if not admit or not value or len(value) > MAX_LABEL_CHARS:
            return OTHER
        with self._lock:
            if value in self._admitted:
                return value
            if len(self._admitted) >= self._limit:
                return OTHER
            self._admitted.add(value)
            return value

    def values(self) -> frozenset[str]:
        return frozenset(self._admitted)


class _Children(Generic[M]):
    """A metric's label children, created once per label tuple and reused on the hot path."""

    def __init__(self, metric: M) -> None:
        self._metric: M = metric
        self._cache: dict[tuple[str, ...], M] = {}

    def __call__(self, *labels: str) -> M:
        child = self._cache.get(labels)
        if child is None:
            child = self._cache[labels] = self._metric.labels(*labels)
        return child


class PrometheusMetrics(Metrics):
    """`models` are configured model names, always their own label value; up to `max_models`
    further names get one as clients use them (only once routed to a provider), the rest are
    "other". Pass `max_models=0` to make `models` a strict allow-list."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        providers: Iterable[str] = KNOWN_PROVIDERS,
        models: Iterable[str] = (),
        fallback_models: Iterable[str] = (),
        tenants: Iterable[str] = (),
        max_models: int = 64,
        latency_buckets: Sequence[float] = LATENCY_BUCKETS,
        process_metrics: bool = True,
        multiprocess_dir: str | None = None,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.multiprocess = bool(multiprocess_dir)
        providers = tuple(providers)
        self._provider = BoundedLabel((*providers, NO_PROVIDER), capacity=4)
        self._model = BoundedLabel(models, capacity=max_models)
        self._fallback_model = BoundedLabel(fallback_models)  # MODEL_FALLBACKS' names only
        self._tenant = BoundedLabel(tenants)  # the configured tenants' names only
        self._status = BoundedLabel(GRPC_STATUSES)
        self._outcome = BoundedLabel(ATTEMPT_OUTCOMES, capacity=8)
        self._backend = BoundedLabel(CACHE_BACKENDS, capacity=4)
        self._auth_reason = BoundedLabel(AUTH_FAILURE_REASONS)
        self._operation = BoundedLabel(CACHE_OPERATIONS, capacity=8)
        self._http_route = BoundedLabel(HTTP_ROUTES)
        self._http_code = BoundedLabel(HTTP_CODES, capacity=8)
        self._lock = threading.Lock()
        self._hits = 0
        self._lookups = 0
        if process_metrics and not self.multiprocess:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)
        self._define(tuple(latency_buckets))
        self._upstreams = _UpstreamStates(self._provider)
        self._exposed = self.registry
        if multiprocess_dir:
            self._exposed = CollectorRegistry()
            collector = MultiProcessCollector(None, multiprocess_dir)  # type: ignore[no-untyped-call]
            self._exposed.register(_Aggregated(collector))
            self._breaker_gauge = Gauge(
                "circuit_breaker_state", "Circuit breaker state: 0 closed, 1 open, 2 half-open",
                ("provider",), registry=None, multiprocess_mode="liveall",
            )  # fmt: skip
            self._keys_gauge = Gauge(
                "key_pool_keys", "API keys per provider by state (usable, cooling_down, disabled)",
                ("provider", "state"), registry=None, multiprocess_mode="liveall",
            )  # fmt: skip
        else:
            self.registry.register(self._upstreams)

    def _define(self, latency_buckets: tuple[float, ...]) -> None:
        r = self.registry
        self.request_latency = Histogram(
            "request_latency_seconds",
            "End-to-end latency of an inference request",
            ("provider", "model", "cache_status"),
            registry=r,
            buckets=latency_buckets,
        )
        # prometheus-client appends `_total` to counter names in the exposition
        self.token_usage = Counter(
            "token_usage",
            "Tokens consumed (direction: input / output)",
            ("provider", "model", "direction"),
            registry=r,
        )
        self.cache_hits = Counter("cache_hits", "Cache hits (exact or semantic)", registry=r)
        self.cache_lookups = Counter("cache_lookups", "Cache lookups", registry=r)
        self.cache_hit_ratio = Gauge("cache_hit_ratio", "cache hits / cache lookups", registry=r)
        self.active_requests = Gauge(
            "active_requests", "In-flight requests", registry=r, multiprocess_mode="livesum"
        )
        self.requests = Counter(
            "requests", "Requests by outcome (gRPC status, lower case)", ("status",), registry=r
        )
        self.auth_failures = Counter(
            "auth_failures",
            "Calls refused for a missing, malformed or unknown client credential",
            ("reason",),
            registry=r,
        )
        self.upstream_attempts = Counter(
            "upstream_attempts",
            "Calls to an upstream provider by outcome",
            ("provider", "outcome"),
            registry=r,
        )
        self.fallbacks = Counter(
            "fallbacks",
            "Steps down a MODEL_FALLBACKS chain: `from` could not answer, `to` was tried next",
            ("from", "to"),
            registry=r,
        )
        self.cache_errors = Counter(
            "cache_errors",
            "Cache backend failures, each turned into a miss or a skipped store",
            ("backend", "operation"),
            registry=r,
        )
        self.cache_backend_up = Gauge(
            "cache_backend_up",
            "1 when the cache backend's last call succeeded, 0 when it failed",
            ("backend",),
            registry=r,
            multiprocess_mode="livemin",
        )
        self.cache_semantic_skips = Counter(
            "cache_semantic_skips",
            "Semantic tier declined: beyond_window (prompt longer than the embedder reads; exact "
            "tier only), different_question (a candidate judged another question), "
            "embedder_busy (the embedder could not give the lookup its vector within "
            "CACHE_TIMEOUT)",
            ("reason",),
            registry=r,
        )
        self.cache_index_backlog_texts = Gauge(
            "cache_index_backlog",
            "Stored answers waiting for their vector (served by the exact tier meanwhile)",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.cache_index_dropped_texts = Counter(
            "cache_index_dropped",
            "Stored answers never indexed (exact tier only): full (the oldest, out of a full "
            "CACHE_INDEX_BACKLOG), failed (the embedder or the index kept failing), shutdown "
            "(still waiting when the process stopped)",
            ("reason",),
            registry=r,
        )
        for reason in INDEX_DROP_REASONS:  # each series from the start, at 0
            self.cache_index_dropped_texts.labels(reason)
        self.cache_hit_similarity = Histogram(
            "cache_hit_similarity",
            "Cosine similarity of semantic cache hits",
            registry=r,
            buckets=SIMILARITY_BUCKETS,
        )
        self.http_requests = Counter(
            "http_requests",
            "Requests to the OpenAI-compatible HTTP API by route and HTTP status code (they are "
            "in requests_total too, by the gRPC status of the same outcome)",
            ("route", "code"),
            registry=r,
        )
        self.tenant_tokens_total = Counter(
            "tenant_tokens",
            "Tokens per tenant and model: prompt and completion as the provider reported them, "
            "saved when answered from the cache",
            ("tenant", "model", "kind"),
            registry=r,
        )
        self.state_backend_up = Gauge(
            "state_backend_up",
            "1 when the shared state backend (STATE_BACKEND=redis) answers, 0 when the proxy "
            "is using local state instead",
            registry=r,
            multiprocess_mode="livemin",
        )
        self.state_backend_up.set(1)  # local state is always there
        self._latency = _Children(self.request_latency)
        self._tenant_tokens = _Children(self.tenant_tokens_total)
        self._tokens = _Children(self.token_usage)
        self._requests = _Children(self.requests)
        self._attempts = _Children(self.upstream_attempts)
        self._fallbacks = _Children(self.fallbacks)
        self._errors = _Children(self.cache_errors)
        self._backends_up = _Children(self.cache_backend_up)

    # -- admission (the gRPC adapter, before the use case) -----------------------------------

    def request_refused(self, status: str) -> None:
        """A call turned away before it started (bad credential, over a limit)."""
        self._requests(self._status(status.lower())).inc()

    def auth_failure(self, reason: str) -> None:
        self.auth_failures.labels(self._auth_reason(reason)).inc()

    def http_request(self, route: str, code: int) -> None:
        """One response of the OpenAI-compatible HTTP API (`route`: its path, else "other")."""
        self.http_requests.labels(self._http_route(route), self._http_code(str(code))).inc()

    # -- the Metrics port ------------------------------------------------------------------

    def request_started(self) -> None:
        self.active_requests.inc()

    def request_finished(
        self, provider: str, model: str, cache_status: CacheStatus, status: str, seconds: float
    ) -> None:
        self.active_requests.dec()
        provider_label = self._provider(provider or NO_PROVIDER)
        # a model name earns a label of its own only once it was routed to a provider
        model_label = self._model(model, admit=provider_label not in (NO_PROVIDER, OTHER))
        self._latency(provider_label, model_label, cache_status.value).observe(max(seconds, 0.0))
        self._requests(self._status(status.lower())).inc()

    def attempt(self, provider: str, outcome: str) -> None:
        self._attempts(self._provider(provider), self._outcome(outcome)).inc()

    def tokens(self, provider: str, model: str, usage: Usage) -> None:
        provider_label = self._provider(provider)
        model_label = self._model(model, admit=provider_label != OTHER)
        if usage.input_tokens > 0:
            self._tokens(provider_label, model_label, "input").inc(usage.input_tokens)
        if usage.output_tokens > 0:
            self._tokens(provider_label, model_label, "output").inc(usage.output_tokens)

    def tenant_tokens(self, tenant: str, model: str, kind: str, count: int) -> None:
        label = self._model(model, admit=False)
        self._tenant_tokens(self._tenant(tenant), label, kind).inc(count)

    def state_backend(self, up: bool) -> None:
        self.state_backend_up.set(1 if up else 0)

    def fallback(self, from_model: str, to_model: str) -> None:
        self._fallbacks(self._fallback_model(from_model), self._fallback_model(to_model)).inc()

    def cache_lookup(self, status: CacheStatus, similarity: float | None) -> None:
        if status is CacheStatus.BYPASS:  # the cache was not consulted
            return
        hit = status in (CacheStatus.EXACT, CacheStatus.SEMANTIC)
        with self._lock:
            self._lookups += 1
            self._hits += hit
            ratio = self._hits / self._lookups
        self.cache_lookups.inc()
        if hit:
            self.cache_hits.inc()
        self.cache_hit_ratio.set(ratio)
        if status is CacheStatus.SEMANTIC and similarity is not None:
            self.cache_hit_similarity.observe(similarity)

    def cache_error(self, backend: str, operation: str) -> None:
        self._errors(self._backend(backend), self._operation(operation)).inc()

    def cache_backend(self, backend: str, up: bool) -> None:
        self._backends_up(self._backend(backend)).set(1 if up else 0)

    def cache_semantic_skip(self, reason: str) -> None:
        if reason in SEMANTIC_SKIP_REASONS:
            self.cache_semantic_skips.labels(reason).inc()

    def cache_index_backlog(self, texts: int) -> None:
        self.cache_index_backlog_texts.set(texts)

    def cache_index_dropped(self, reason: str, count: int) -> None:
        if reason in INDEX_DROP_REASONS:
            self.cache_index_dropped_texts.labels(reason).inc(count)

    def watch(self, upstreams: Mapping[str, Upstream], now: Callable[[], float]) -> None:
        """Publishes `circuit_breaker_state` and `key_pool_keys` of these upstreams, read from
        their breakers and key pools at each scrape (`now`: the clock they run on)."""
        self._upstreams.upstreams = dict(upstreams)
        self._upstreams.now = now

    def publish_upstreams(self) -> None:
        """Multiprocess mode: writes this worker's breaker and key-pool states for the others'
        scrapes (called every second)."""
        if not self.multiprocess:
            return
        for metric in self._upstreams.collect():
            gauge = (
                self._breaker_gauge if metric.name == "circuit_breaker_state" else self._keys_gauge
            )
            for sample in metric.samples:
                gauge.labels(*sample.labels.values()).set(sample.value)

    # -- exposition ------------------------------------------------------------------------

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format (`CONTENT_TYPE`)."""
        return generate_latest(self._exposed)

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """The registry in the format an HTTP `Accept` header asks for, and its content type."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self._exposed), content_type

    def model_labels(self) -> frozenset[str]:
        return self._model.values() | {OTHER}


class _UpstreamStates(Collector):
    """Breaker and key-pool gauges computed when scraped, so they are never stale: a breaker
    whose cooldown has passed shows half-open (2) before the next call, a key whose cooldown
    ended shows usable."""

    def __init__(self, provider: BoundedLabel) -> None:
        self._provider = provider
        self.upstreams: dict[str, Upstream] = {}
        self.now: Callable[[], float] = time.monotonic

    def collect(self) -> Iterator[Metric]:
        breakers = GaugeMetricFamily(
            "circuit_breaker_state",
            "Circuit breaker state: 0 closed, 1 open, 2 half-open",
            labels=("provider",),
        )
        keys = GaugeMetricFamily(
            "key_pool_keys",
            "API keys per provider by state (usable, cooling_down, disabled)",
            labels=("provider", "state"),
        )
        now = self.now()
        for name, upstream in self.upstreams.items():
            label = self._provider(name)
            breakers.add_metric((label,), int(upstream.breaker.state(now)))
            pool = upstream.keys
            keys.add_metric((label, "usable"), len(pool.usable(now)))
            keys.add_metric((label, "cooling_down"), pool.cooling_down(now))
            keys.add_metric((label, "disabled"), pool.disabled())
        yield breakers
        yield keys


class _Aggregated(Collector):
    """Every worker's metrics, with `cache_hit_ratio` computed from the summed counters (each
    worker's own ratio cannot be combined into the overall one)."""

    def __init__(self, collector: MultiProcessCollector) -> None:
        self._collector = collector

    def collect(self) -> Iterator[Metric]:
        totals = {"cache_hits": 0.0, "cache_lookups": 0.0}
        for metric in self._collector.collect():  # type: ignore[no-untyped-call]
            if metric.name == "cache_hit_ratio":
                continue
            if metric.name in totals:
                totals[metric.name] = sum(
                    s.value for s in metric.samples if s.name.endswith("_total")
                )
            yield metric
        ratio = GaugeMetricFamily("cache_hit_ratio", "cache hits / cache lookups")
        lookups = totals["cache_lookups"]
        ratio.add_metric((), totals["cache_hits"] / lookups if lookups else 0.0)
        yield ratio
