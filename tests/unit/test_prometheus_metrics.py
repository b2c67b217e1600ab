from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from adapters.outbound.observability.prometheus import PrometheusMetrics
from application.resilience import Upstream
from domain.circuit_breaker import CircuitBreaker, Verdict
from domain.key_pool import ApiKey, KeyPool
from domain.model import CacheStatus, Usage
from tests.fakes import FakeProvider

CONTRACT = {  # the predecessor's metrics: exposed name -> (type, labels)
    "request_latency_seconds": ("histogram", {"provider", "model", "cache_status"}),
    "token_usage_total": ("counter", {"provider", "model", "direction"}),
    "cache_hits_total": ("counter", set()),
    "cache_lookups_total": ("counter", set()),
    "cache_hit_ratio": ("gauge", set()),
    "circuit_breaker_state": ("gauge", {"provider"}),
    "active_requests": ("gauge", set()),
    "requests_total": ("counter", {"status"}),
}


def samples(metrics: PrometheusMetrics) -> list[Sample]:
    text = metrics.exposition().decode()
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def value(metrics: PrometheusMetrics, name: str, **labels: str) -> float:
    found = [s.value for s in samples(metrics) if s.name == name and s.labels == labels]
    assert len(found) == 1, (name, labels, found)
    return found[0]


def label_values(metrics: PrometheusMetrics, name: str, label: str) -> set[str]:
    return {s.labels[label] for s in samples(metrics) if s.name == name and label in s.labels}


def exercised() -> PrometheusMetrics:
    m = PrometheusMetrics(process_metrics=False)
    m.request_started()
    m.request_started()
    m.request_finished("openai", "gpt-4o", CacheStatus.MISS, "ok", 0.3)
    m.tokens("openai", "gpt-4o", Usage(input_tokens=12, output_tokens=30))
    m.cache_lookup(CacheStatus.MISS, None)
    m.cache_lookup(CacheStatus.SEMANTIC, 0.97)
    m.cache_lookup(CacheStatus.EXACT, 1.0)
    Upstreams(m)
    return m


def test_the_predecessors_metrics_keep_their_names_types_and_labels() -> None:
    text = exercised().exposition().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for exposed, (kind, labels) in CONTRACT.items():
        family = families[exposed.removesuffix("_total")]
        assert family.type == kind, exposed
        names = {s.name for s in family.samples}
        main = {exposed} if kind != "histogram" else {f"{exposed}_bucket", f"{exposed}_count"}
        assert main <= names, (exposed, names)
        for sample in family.samples:
            if sample.name in main:
                assert set(sample.labels) - {"le"} == labels, (exposed, sample.labels)
        assert f"# TYPE {exposed} {kind}" in text


def test_request_counts_latency_and_in_flight() -> None:
    m = exercised()
    assert value(m, "active_requests") == 1
    assert value(m, "requests_total", status="ok") == 1
    labels = {"provider": "openai", "model": "gpt-4o", "cache_status": "miss"}
    assert value(m, "request_latency_seconds_count", **labels) == 1
    assert value(m, "request_latency_seconds_sum", **labels) == 0.3
    assert value(m, "request_latency_seconds_bucket", **labels, le="0.25") == 0
    assert value(m, "request_latency_seconds_bucket", **labels, le="0.5") == 1


def test_tokens_by_direction() -> None:
    m = exercised()
    labels = {"provider": "openai", "model": "gpt-4o"}
    assert value(m, "token_usage_total", **labels, direction="input") == 12
    assert value(m, "token_usage_total", **labels, direction="output") == 30


def test_tenant_tokens_have_the_configured_tenants_as_labels_and_nothing_else() -> None:
    m = PrometheusMetrics(process_metrics=False, tenants=("team-a",))
    m.tokens("openai", "gpt-4o", Usage(1, 1))  # routed: the model has its label
    m.tenant_tokens("team-a", "gpt-4o", "prompt", 12)
    m.tenant_tokens("team-a", "gpt-4o", "saved", 30)
    m.tenant_tokens("invented", "gpt-4o", "prompt", 1)
    m.tenant_tokens("also-invented", "never-routed", "prompt", 1)
    assert value(m, "tenant_tokens_total", tenant="team-a", model="gpt-4o", kind="prompt") == 12
    assert value(m, "tenant_tokens_total", tenant="team-a", model="gpt-4o", kind="saved") == 30
    assert value(m, "tenant_tokens_total", tenant="other", model="gpt-4o", kind="prompt") == 1
    assert label_values(m, "tenant_tokens_total", "tenant") == {"team-a", "other"}
    assert label_values(m, "tenant_tokens_total", "model") == {"gpt-4o", "other"}


def test_state_backend_up_until_it_is_not() -> None:
    m = PrometheusMetrics(process_metrics=False)
    assert value(m, "state_backend_up") == 1
    m.state_backend(False)
    assert value(m, "state_backend_up") == 0


def test_cache_hits_lookups_ratio_and_similarity() -> None:
    m = exercised()
    assert value(m, "cache_lookups_total") == 3
    assert value(m, "cache_hits_total") == 2
    assert value(m, "cache_hit_ratio") == 2 / 3
    assert value(m, "cache_hit_similarity_count") == 1  # semantic hits only
    assert value(m, "cache_hit_similarity_sum") == 0.97


def test_a_bypassed_cache_is_not_a_lookup() -> None:
    m = PrometheusMetrics(process_metrics=False)
    m.cache_lookup(CacheStatus.BYPASS, None)
    assert value(m, "cache_lookups_total") == 0
    assert value(m, "cache_hit_ratio") == 0


class Upstreams:
    """Real breakers and key pools on a hand-moved clock, watched by the metrics."""

    def __init__(self, m: PrometheusMetrics) -> None:
        self.t = 0.0
        self.keys = [ApiKey("sk-one"), ApiKey("sk-two"), ApiKey("sk-three")]
        self.up = {
            name: Upstream(
                FakeProvider(name),
                KeyPool(name, list(self.keys), 30.0),
                CircuitBreaker(name, failure_threshold=1, cooldown=10.0),
            )
            for name in ("openai", "gemini")
        }
        m.watch(self.up, lambda: self.t)


def test_breaker_state_is_read_when_scraped_including_half_open() -> None:
    m = PrometheusMetrics(process_metrics=False)
    u = Upstreams(m)
    assert value(m, "circuit_breaker_state", provider="openai") == 0
    breaker = u.up["gemini"].breaker
    breaker.record(breaker.admit(u.t), Verdict.FAILURE, u.t)
    assert value(m, "circuit_breaker_state", provider="gemini") == 1
    u.t = 10.0  # the cooldown has passed: half-open before any call arrives
    assert value(m, "circuit_breaker_state", provider="gemini") == 2


def test_key_pool_keys_are_read_when_scraped() -> None:
    m = PrometheusMetrics(process_metrics=False)
    u = Upstreams(m)
    pool = u.up["gemini"].keys
    pool.cool_down(u.keys[0], u.t, 5.0)
    pool.disable(u.keys[1])
    assert value(m, "key_pool_keys", provider="gemini", state="usable") == 1
    assert value(m, "key_pool_keys", provider="gemini", state="cooling_down") == 1
    assert value(m, "key_pool_keys", provider="gemini", state="disabled") == 1
    u.t = 5.0  # the cooldown ended: usable again without any call
    assert value(m, "key_pool_keys", provider="gemini", state="usable") == 2
    assert value(m, "key_pool_keys", provider="gemini", state="cooling_down") == 0


def test_operator_metrics() -> None:
    m = PrometheusMetrics(process_metrics=False)
    m.attempt("openai", "upstream_fault")
    m.attempt("openai", "upstream_fault")
    m.attempt("openai", "success")
    m.cache_error("response_store", "lookup")
    assert value(m, "upstream_attempts_total", provider="openai", outcome="upstream_fault") == 2
    assert value(m, "upstream_attempts_total", provider="openai", outcome="success") == 1
    assert value(m, "cache_errors_total", backend="response_store", operation="lookup") == 1


def test_semantic_skips_are_counted_by_a_bounded_reason() -> None:
    m = PrometheusMetrics(process_metrics=False)
    m.cache_semantic_skip("beyond_window")
    m.cache_semantic_skip("beyond_window")
    m.cache_semantic_skip("different_question")
    m.cache_semantic_skip("something invented")
    assert value(m, "cache_semantic_skips_total", reason="beyond_window") == 2
    assert value(m, "cache_semantic_skips_total", reason="different_question") == 1
    reasons = {s.labels["reason"] for s in samples(m) if s.name == "cache_semantic_skips_total"}
    assert reasons == {"beyond_window", "different_question"}


def test_invented_model_names_create_at_most_n_plus_one_series() -> None:
    m = PrometheusMetrics(process_metrics=False, max_models=16)
    for i in range(10_000):
        m.request_finished("openai", f"gpt-made-up-{i}", CacheStatus.MISS, "not_found", 0.01)
        m.tokens("openai", f"gpt-made-up-{i}", Usage(1, 1))
    latency_models = label_values(m, "request_latency_seconds_count", "model")
    assert len(latency_models) == 17
    assert "other" in latency_models
    assert label_values(m, "token_usage_total", "model") == latency_models
    assert value(m, "requests_total", status="not_found") == 10_000


def test_configured_models_always_keep_their_label() -> None:
    m = PrometheusMetrics(
        process_metrics=False, models=["gpt-4o", "gemini-2.0-flash"], max_models=0
    )
    m.request_finished("openai", "gpt-4o-made-up", CacheStatus.MISS, "ok", 0.1)
    m.request_finished("gemini", "gemini-2.0-flash", CacheStatus.MISS, "ok", 0.1)
    assert label_values(m, "request_latency_seconds_count", "model") == {
        "other",
        "gemini-2.0-flash",
    }


def test_an_unroutable_model_takes_no_label_slot() -> None:
    m = PrometheusMetrics(process_metrics=False, max_models=1)
    m.request_finished("", "no-such-model", CacheStatus.BYPASS, "not_found", 0.001)
    m.request_finished("openai", "gpt-4o", CacheStatus.MISS, "ok", 0.2)
    assert label_values(m, "request_latency_seconds_count", "model") == {"other", "gpt-4o"}
    assert label_values(m, "request_latency_seconds_count", "provider") == {"none", "openai"}


def test_fixed_label_sets_are_normalised() -> None:
    m = PrometheusMetrics(process_metrics=False)
    m.request_finished("openai", "gpt-4o", CacheStatus.MISS, "UNAVAILABLE", 1.0)
    m.request_finished("openai", "gpt-4o", CacheStatus.MISS, "made_up_status", 1.0)
    assert label_values(m, "requests_total", "status") == {"unavailable", "other"}
    for i in range(100):
        m.attempt(f"provider-{i}", f"outcome-{i}")
    assert len(label_values(m, "upstream_attempts_total", "provider")) <= 2 + 1 + 4 + 1
    assert len(label_values(m, "upstream_attempts_total", "outcome")) <= 6 + 8 + 1


def test_each_instance_has_its_own_registry() -> None:
    first, second = PrometheusMetrics(), PrometheusMetrics()  # no duplicate-name error
    first.request_started()
    assert value(first, "active_requests") == 1
    assert value(second, "active_requests") == 0
    assert "process_resident_memory_bytes" in first.exposition().decode()


def test_fallbacks_are_counted_by_configured_model_names_only() -> None:
    m = PrometheusMetrics(process_metrics=False, fallback_models=["gpt-4o", "gemini-1.5-flash"])
    m.fallback("gpt-4o", "gemini-1.5-flash")
    m.fallback("gpt-4o", "gemini-1.5-flash")
    m.fallback("gpt-made-up", "gemini-1.5-flash")
    assert value(m, "fallbacks_total", **{"from": "gpt-4o", "to": "gemini-1.5-flash"}) == 2
    assert value(m, "fallbacks_total", **{"from": "other", "to": "gemini-1.5-flash"}) == 1
