"""Settings that keep the proxy safe: bind address, URL credentials, the embedding key."""

from __future__ import annotations

import hashlib
import logging

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from adapters.process.config_error import ConfigError
from adapters.process.lifecycle import describe_cache
from adapters.process.settings import load_settings, redact_url
from cli import simulated, warn_if_open
from container import Container, build_tracer
from simulator import RunningSimulator

REDIS = "redis://cache-user:redis-pass-123@redis.internal:6379/0"
QDRANT = "https://qdrant-key-456@qdrant.internal:6333"


def test_without_client_authentication_the_default_bind_is_loopback() -> None:
    assert load_settings().host == "127.0.0.1"
    assert load_settings(auth_tokens="tok-alpha-1").host == "0.0.0.0"
    assert load_settings(grpc_host="::1").host == "::1"


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "::", "proxy.example"])
def test_a_public_bind_without_tokens_is_refused_naming_both_ways_out(host: str) -> None:
    with pytest.raises(ConfigError, match="AUTH_TOKENS") as caught:
        load_settings(grpc_host=host)
    assert "ALLOW_UNAUTHENTICATED=true" in str(caught.value)
    assert load_settings(grpc_host=host, allow_unauthenticated=True).host == host
    assert load_settings(grpc_host=host, auth_tokens="tok-alpha-1").host == host


def test_http_host_follows_the_same_safe_default_and_refusal() -> None:
    assert load_settings().http_bind_host == "127.0.0.1"
    assert load_settings(auth_tokens="tok-alpha-1").http_bind_host == "0.0.0.0"
    assert load_settings().http_port == 8080
    with pytest.raises(ConfigError, match=r"HTTP_HOST=0\.0\.0\.0 serves beyond this machine"):
        load_settings(http_host="0.0.0.0")
    # off: its host does not matter
    assert load_settings(http_host="0.0.0.0", http_port=0).listeners() == (
        ("GRPC_HOST", "127.0.0.1", 50051),
    )


def test_an_unauthenticated_public_http_bind_says_so_loudly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    warn_if_open(load_settings(http_host="0.0.0.0", allow_unauthenticated=True))
    assert [r.getMessage().split("reaches ")[1][:12] for r in caplog.records] == ["0.0.0.0:8080"]


def test_an_unauthenticated_public_bind_says_so_loudly(caplog: pytest.LogCaptureFixture) -> None:
    warn_if_open(load_settings(grpc_host="0.0.0.0", allow_unauthenticated=True))
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "UNAUTHENTICATED" in caplog.text
    caplog.clear()
    warn_if_open(load_settings(allow_unauthenticated=True))  # loopback: nothing to say
    warn_if_open(load_settings(grpc_host="0.0.0.0", auth_tokens="tok-alpha-1"))
    assert caplog.records == []


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (REDIS, "redis://cache-user:[redacted]@redis.internal:6379/0"),
        ("redis://:only-a-pass@r:6379", "redis://[redacted]@r:6379"),
        (QDRANT, "https://[redacted]@qdrant.internal:6333"),
        ("user:pw-pw-pw@host:6379", "user:[redacted]@host:6379"),
        ("localhost:6379", "localhost:6379"),
        ("http://localhost:6333", "http://localhost:6333"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_url_credentials_are_secrets_everywhere_settings_show() -> None:
    settings = load_settings(redis_addr=REDIS, qdrant_url=QDRANT, cache_mode="remote",
                             embedder="local")  # fmt: skip
    shown = repr(settings) + str(settings) + describe_cache(settings)
    for secret in ("redis-pass-123", "qdrant-key-456"):
        assert secret not in shown
        assert secret in settings.secrets()  # so the log filter blanks it too
    assert "redis.internal" in describe_cache(settings)


def test_exceptions_on_spans_are_redacted() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = build_tracer(provider, load_settings(redis_addr=REDIS))
    with tracer.span("cache.lookup") as span:
        try:
            raise ConnectionError(f"cannot reach {REDIS}")
        except ConnectionError as error:
            span.error(error)
    (event,) = exporter.get_finished_spans()[0].events
    recorded = str(event.attributes)
    assert "redis-pass-123" not in recorded
    assert "[redacted]" in str(event.attributes["exception.message"])
    assert "[redacted]" in str(event.attributes["exception.stacktrace"])


@pytest.mark.parametrize(
    ("embedder", "public"),
    [
        ("openai", "https://api.openai.com/v1"),
        ("gemini", "https://generativelanguage.googleapis.com"),
    ],
)
def test_the_embedding_key_goes_to_the_embedding_api_not_the_chat_base_url(
    embedder: str, public: str
) -> None:
    settings = load_settings(
        cache_mode="remote",
        embedder=embedder,
        embedding_api_key="emb-key-123456",
        openai_base_url="http://vllm.internal:8000/v1",
        gemini_base_url="http://gemini-proxy.internal",
    )
    container = Container(settings=settings)
    assert str(container.embedding_http().base_url).rstrip("/") == public
    own = load_settings(**{**settings.model_dump(), "embedding_base_url": "http://emb.internal"})
    assert str(Container(settings=own).embedding_http().base_url).rstrip("/") == (
        "http://emb.internal"
    )


def test_with_the_simulator_embeddings_go_to_the_simulator_too() -> None:
    simulator = RunningSimulator("http://127.0.0.1:8787", simulator=None)  # type: ignore[arg-type]
    for embedder, path in (("openai", "/v1"), ("gemini", "")):
        settings = load_settings(
            cache_mode="remote", embedder=embedder, embedding_api_key="emb-key-123456"
        )
        assert simulated(settings, simulator).embedding_url == f"http://127.0.0.1:8787{path}"


def test_auth_tokens_may_name_their_tenants() -> None:
    settings = load_settings(auth_tokens="team-a=tok-a, plain-token ,padded==,a+b/c=d")
    names = dict(settings.named_tokens())
    assert names["team-a"] == "tok-a"
    assert names["tenant-" + hashlib.sha256(b"plain-token").hexdigest()[:16]] == "plain-token"
    assert "padded==" in names.values()  # base64 padding is not a name
    assert "a+b/c=d" in names.values()  # neither is what precedes an = that is no name
    assert set(settings.secrets()) >= {"tok-a", "plain-token"}
    assert "team-a=tok-a" not in settings.secrets()


@pytest.mark.parametrize(
    ("tokens", "problem"),
    [
        ("team-a=x,team-a=y", "team-a are given twice"),
        ("team-a=x,team-b=x", "same token"),
        ("anonymous=x", "anonymous"),
    ],
)
def test_tenant_names_are_distinct(tokens: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        load_settings(auth_tokens=tokens)


def test_budgets_name_configured_tenants() -> None:
    settings = load_settings(
        auth_tokens="team-a=x,team-b=y",
        tenant_token_budget="1000/day",
        tenant_budgets="team-a=10/hour",
    )
    assert str(settings.budgets.of("team-a")) == "10/hour"
    assert str(settings.budgets.of("team-b")) == "1000/day"
    with pytest.raises(ConfigError, match="TENANT_BUDGETS: team-c not a tenant"):
        load_settings(auth_tokens="team-a=x", tenant_budgets="team-c=10/day")
