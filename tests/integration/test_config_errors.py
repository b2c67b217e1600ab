"""Every setting with a bad value stops `llm-proxy serve` with exit 2 and a message that names the
variable, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import cli
from adapters.process.settings import Settings
from cli import main

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]

# A value each setting refuses, with whatever else it needs to be checked at all.
BAD: dict[str, dict[str, str]] = {
    "grpc_host": {"GRPC_HOST": "0.0.0.0"},  # public without client authentication
    "allow_unauthenticated": {"ALLOW_UNAUTHENTICATED": "perhaps"},
    "tls_cert_file": {"TLS_CERT_FILE": "/nonexistent/cert.pem"},
    "tls_key_file": {"TLS_KEY_FILE": "/nonexistent/key.pem"},
    "tls_client_ca_file": {"TLS_CLIENT_CA_FILE": "/nonexistent/ca.pem"},
    "grpc_port": {"GRPC_PORT": "70000"},
    "http_host": {"HTTP_HOST": "10.0.0.1"},  # public without client authentication
    "http_port": {"HTTP_PORT": "-1"},
    "metrics_port": {"METRICS_PORT": "-1"},
    "redis_addr": {"REDIS_ADDR": "redis://:bad:port"},
    "qdrant_url": {"QDRANT_URL": "qdrant:6333"},
    "similarity_threshold": {"SIMILARITY_THRESHOLD": "1.5"},
    "cache_ttl": {"CACHE_TTL": "0s"},
    "request_timeout": {"REQUEST_TIMEOUT": "soon"},
    "max_retries": {"MAX_RETRIES": "-1"},
    "cb_failure_threshold": {"CB_FAILURE_THRESHOLD": "0"},
    "cb_cooldown": {"CB_COOLDOWN": "-1s"},
    "cb_half_open_probes": {"CB_HALF_OPEN_PROBES": "0"},
    "embedding_api_key": {"CACHE_MODE": "remote"},  # its default embedder (openai) needs one
    "embedding_base_url": {"EMBEDDING_BASE_URL": "api.example.com/v1"},
    "cache_mode": {"CACHE_MODE": "sometimes"},
    "embedder": {"EMBEDDER": "bert"},
    "embedding_model": {
        "CACHE_MODE": "remote",
        "EMBEDDING_API_KEY": "sk-test",
        "EMBEDDING_MODEL": "my-own-model",
    },
    "embedding_dimensions": {"EMBEDDING_DIMENSIONS": "0"},
    "cache_max_entries": {"CACHE_MAX_ENTRIES": "0"},
    "cache_sweep_interval": {"CACHE_SWEEP_INTERVAL": "0"},
    "openai_api_keys": {"OPENAI_API_KEYS": "sk-a,sk-a"},
    "gemini_api_keys": {"GEMINI_API_KEYS": "g-a,g-a"},
    "openai_base_url": {"OPENAI_BASE_URL": "localhost:8000/v1"},
    "gemini_base_url": {"GEMINI_BASE_URL": "ftp://example.com"},
    "openai_connect_timeout": {"OPENAI_CONNECT_TIMEOUT": "0"},
    "openai_read_timeout": {"OPENAI_READ_TIMEOUT": "never"},
    "openai_stream_idle_timeout": {"OPENAI_STREAM_IDLE_TIMEOUT": "0s"},
    "gemini_connect_timeout": {"GEMINI_CONNECT_TIMEOUT": "0"},
    "gemini_read_timeout": {"GEMINI_READ_TIMEOUT": "-5s"},
    "gemini_stream_idle_timeout": {"GEMINI_STREAM_IDLE_TIMEOUT": "0"},
    "anthropic_api_keys": {"ANTHROPIC_API_KEYS": "a-a,a-a"},
    "anthropic_base_url": {"ANTHROPIC_BASE_URL": "api.anthropic.com"},
    "anthropic_connect_timeout": {"ANTHROPIC_CONNECT_TIMEOUT": "0"},
    "anthropic_read_timeout": {"ANTHROPIC_READ_TIMEOUT": "soon"},
    "anthropic_stream_idle_timeout": {"ANTHROPIC_STREAM_IDLE_TIMEOUT": "-1s"},
    "anthropic_max_tokens": {"ANTHROPIC_MAX_TOKENS": "0"},
    "upstream_max_connections": {"UPSTREAM_MAX_CONNECTIONS": "0"},
    "upstream_timeout": {"UPSTREAM_TIMEOUT": "-1s"},
    "max_response_bytes": {"MAX_RESPONSE_BYTES": "10"},
    "auth_tokens": {"AUTH_TOKENS": "t,t"},
    "retry_wait_initial": {"RETRY_WAIT_INITIAL": "a while"},
    "retry_wait_max": {"RETRY_WAIT_MAX": "-1"},
    "key_cooldown_default": {"KEY_COOLDOWN_DEFAULT": "x"},
    "cache_timeout": {"CACHE_TIMEOUT": "0"},
    "cache_index_backlog": {"CACHE_INDEX_BACKLOG": "0"},
    "cache_embed_max_cpu": {"CACHE_EMBED_MAX_CPU": "1.5"},
    "cache_embed_nice": {"CACHE_EMBED_NICE": "20"},
    "workers": {"WORKERS": "0"},
    "model_routes": {"MODEL_ROUTES": "fast=bedrock"},
    "model_fallbacks": {"MODEL_FALLBACKS": "gpt-4o=llama-3"},  # llama-3 routes nowhere
    "max_request_bytes": {"MAX_REQUEST_BYTES": "1"},
    "max_messages": {"MAX_MESSAGES": "0"},
    "max_model_name_length": {"MAX_MODEL_NAME_LENGTH": "0"},
    "max_concurrent_requests": {"MAX_CONCURRENT_REQUESTS": "-1"},
    "tenant_rate_limit": {"TENANT_RATE_LIMIT": "fast"},
    "tenant_rate_burst": {"TENANT_RATE_BURST": "-1"},
    "state_backend": {"STATE_BACKEND": "etcd"},
    "state_timeout": {"STATE_TIMEOUT": "0"},
    "tenant_token_budget": {"TENANT_TOKEN_BUDGET": "1000/week"},
    "tenant_budgets": {"AUTH_TOKENS": "team-a=tok", "TENANT_BUDGETS": "team-b=10/day"},
    "shutdown_grace": {"SHUTDOWN_GRACE": "-1s"},
    "http_body_timeout": {"HTTP_BODY_TIMEOUT": "0s"},
    "max_buffered_bytes": {"MAX_BUFFERED_BYTES": "10"},
    "http_header_timeout": {"HTTP_HEADER_TIMEOUT": "slow"},
    "http_idle_timeout": {"HTTP_IDLE_TIMEOUT": "-1s"},
    "max_connections": {"MAX_CONNECTIONS": "0"},
    "grpc_max_connection_idle": {"GRPC_MAX_CONNECTION_IDLE": "0"},
    "grpc_max_connection_age": {"GRPC_MAX_CONNECTION_AGE": "forever"},
    "http_allowed_origins": {"HTTP_ALLOWED_ORIGINS": "https://app.example/page"},
    "log_level": {"LOG_LEVEL": "verbose"},
    "log_format": {"LOG_FORMAT": "xml"},
}
# Settings with no bad value: any string is a name, a path that is checked at startup (an unusable
# CACHE_DIR is a warning: the proxy serves without the cache).
ANY_VALUE = {"qdrant_collection", "cache_dir", "prometheus_multiproc_dir"}


def test_every_setting_is_covered() -> None:
    assert set(Settings.model_fields) == set(BAD) | ANY_VALUE


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.setenv("CACHE_MODE", "off")  # the local model need not load to check settings

    async def serving(*_: object) -> None:
        raise AssertionError("the settings were accepted: the proxy would serve")

    monkeypatch.setattr(cli, "_run", serving)
    return monkeypatch


@pytest.mark.parametrize("field", sorted(BAD))
def test_a_bad_setting_exits_2_naming_it(
    field: str, clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for variable, value in BAD[field].items():
        clean_env.setenv(variable, value)
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert field.upper() in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "env",
    [
        {"REDIS_ADDR": "garbage", "CACHE_MODE": "remote", "EMBEDDER": "local"},
        {"OTEL_EXPORTER_OTLP_PROTOCOL": "bogus", "OTEL_TRACES_EXPORTER": "otlp"},
        {"OTEL_TRACES_EXPORTER": "zipkin-v0"},
    ],
    ids=["redis", "otel-protocol", "otel-exporter"],
)
def test_the_installed_entry_point_exits_2_without_traceback(env: dict[str, str]) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "cli", "serve"],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "CACHE_MODE": "off", "GRPC_PORT": "0", "METRICS_PORT": "0",
             "HTTP_PORT": "0",
             **env},
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert run.returncode == 2, run.stderr
    assert next(iter(env)) in run.stderr
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize("variable", ["OPENAI_BASE_URL", "GEMINI_BASE_URL", "EMBEDDING_BASE_URL"])
def test_credentials_in_a_provider_url_exit_2_naming_it_without_the_password(
    variable: str, clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_env.setenv(variable, "https://user:hunter2-secret@api.example.com/v1")
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert variable in err
    assert "credentials" in err
    assert "hunter2-secret" not in err
