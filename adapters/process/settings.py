"""Configuration from the environment, with the predecessor's names and defaults."""

from __future__ import annotations

import hashlib
import ipaddress
import math
import re
import ssl
from collections.abc import Iterator
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from adapters.outbound.embedders.gemini import NATIVE_DIMENSIONS as GEMINI_DIMENSIONS
from adapters.outbound.embedders.openai import NATIVE_DIMENSIONS as OPENAI_DIMENSIONS
from adapters.process.config_error import ConfigError
from adapters.process.durations import parse_duration
from adapters.process.supervisor import cpu_quota
from domain.model import MAX_OUTPUT_TOKENS
from domain.routing import ModelRouter, Route
from domain.usage import ANONYMOUS, Budget, Budgets

PROVIDERS = ("openai", "gemini", "anthropic")


def _duration(value: object) -> object:
    return parse_duration(value) if isinstance(value, str) else value


def _split(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _parse_routes(value: object) -> object:
    """MODEL_ROUTES="fast=openai:gpt-4o-mini,llama3=openai" (name=provider[:upstream model])."""
    if not isinstance(value, str):
        return value
    routes: dict[str, Route] = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        name, sep, target = item.partition("=")
        provider, _, model = target.partition(":")
        if not sep or not name.strip() or provider.strip() not in PROVIDERS:
            raise ValueError(
                f"{item!r} is not name=provider[:model] with provider one of {', '.join(PROVIDERS)}"
            )
        routes[name.strip()] = Route(provider.strip(), model.strip() or name.strip())
    return routes


def _parse_fallbacks(value: object) -> object:
    """MODEL_FALLBACKS="gpt-4o=gemini-1.5-pro|gemini-1.5-flash,fast=gemini-2.0-flash"."""
    if not isinstance(value, str):
        return value
    chains: dict[str, tuple[str, ...]] = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        name, sep, targets = (part.strip() for part in item.partition("="))
        chain = tuple(dict.fromkeys(filter(None, (t.strip() for t in targets.split("|")))))
        if not sep or not name or not chain:
            raise ValueError(f"{item!r} is not model=fallback[|fallback...]")
        if name in chains:
            raise ValueError(f"{name} has two chains; give one: {name}=a|b")
        chains[name] = chain
    return chains


def _http_url(url: str) -> str:
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ValueError(f"{redact_url(url)!r} has a bad port") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{redact_url(url)!r} is not an http(s)://host[:port] URL")
    return url


def _no_userinfo(url: str) -> str:
    """A provider's base URL carries no credentials: its key goes in the API key list (a
    user:password@ here was accepted and then every call failed)."""
    if "@" in urlsplit(url).netloc:
        raise ValueError(
            f"{redact_url(url)!r} has credentials (user:password@) in it; give the URL without "
            "them and the key in the provider's API key setting"
        )
    return url


def _redis_addr(addr: str) -> str:
    """host:port, [v6]:port, or a redis://, rediss:// or unix:// URL."""
    parts = urlsplit(addr if "://" in addr else f"redis://{addr}")
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme == "unix" and parts.path:
        return addr
    if parts.scheme not in ("redis", "rediss") or not parts.hostname or port == -1:
        raise ValueError(
            f"{redact_url(addr)!r} is not host:port or a "
            "redis://[user:password@]host[:port][/db] URL"
        )
    if "://" not in addr and port is None:
        raise ValueError(f"{redact_url(addr)!r} has no port: write host:port (6379 is the usual)")
    db = parts.path.strip("/")
    if db and not db.isdigit():
        raise ValueError(f"{redact_url(addr)!r}: the database after the last / must be a number")
    return addr


def _origin(origin: str) -> str:
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path.strip("/"):
        raise ValueError(
            f"{origin!r} is not an origin: scheme://host[:port], e.g. https://app.example"
        )
    return origin.rstrip("/").lower()


def _origins(origins: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(_origin(o) for o in origins)


def _distinct(keys: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
    values = [k.get_secret_value() for k in keys]
    if len(set(values)) != len(values):
        raise ValueError("the same API key is listed twice")
    return keys


TENANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def named_token(entry: str) -> tuple[str, str]:
    """An AUTH_TOKENS entry: `name=token`, or a plain token named by its fingerprint. An entry
    is named only when what precedes its first `=` is a name (letters, digits, `_.-`, up to 64)
    and what follows is more than `=` padding, so a base64 token stays one token."""
    name, sep, token = entry.partition("=")
    if sep and TENANT_NAME.fullmatch(name) and token.strip("="):
        return name, token
    return "tenant-" + hashlib.sha256(entry.encode()).hexdigest()[:16], entry


def _parse_budget(value: object) -> object:
    return Budget.parse(value) if isinstance(value, str) and value.strip() else None


def _parse_budgets(value: object) -> object:
    """TENANT_BUDGETS="team-a=1000000/day,team-b=50000/hour"."""
    if not isinstance(value, str):
        return value
    budgets: dict[str, Budget] = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        name, sep, budget = (part.strip() for part in item.partition("="))
        if not sep or not name:
            raise ValueError(f"{item!r} is not tenant=tokens/window (e.g. team-a=1000000/day)")
        if name in budgets:
            raise ValueError(f"{name} has two budgets; give one")
        budgets[name] = Budget.parse(budget)
    return budgets


Duration = Annotated[float, BeforeValidator(_duration), Field(ge=0)]
PositiveDuration = Annotated[float, BeforeValidator(_duration), Field(gt=0)]
Keys = Annotated[
    tuple[SecretStr, ...], NoDecode, BeforeValidator(_split), AfterValidator(_distinct)
]
HttpUrl = Annotated[str, AfterValidator(_http_url)]
ProviderUrl = Annotated[str, AfterValidator(_http_url), AfterValidator(_no_userinfo)]
Port = Annotated[int, Field(ge=0, le=65535)]
Limit = Annotated[int, Field(ge=0)]  # 0: no limit

# The embedding APIs' own endpoints: EMBEDDING_API_KEY goes there unless EMBEDDING_BASE_URL says
# otherwise (never to OPENAI_BASE_URL, which may be a self-hosted server over plain http).
EMBEDDING_BASE_URLS = {
    "openai": "https://api.openai.com/v1",
    "gemini": "https://generativelanguage.googleapis.com",
}
_URL_SECRETS = ("redis_addr", "qdrant_url")
NATIVE_DIMENSIONS = {"openai": OPENAI_DIMENSIONS, "gemini": GEMINI_DIMENSIONS}


def redact_url(url: str) -> str:
    """`redis://user:pw@host:6379/0` -> `redis://user:[redacted]@host:6379/0`; a URL without
    credentials (or not a URL at all) is returned as it is."""
    parts = urlsplit(url if "://" in url else f"//{url}")
    if parts.password is None and "@" not in parts.netloc:
        return url
    userinfo, _, host = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0] if parts.password is not None else ""
    netloc = f"{user}:[redacted]@{host}" if user else f"[redacted]@{host}"
    redacted = urlunsplit(parts._replace(netloc=netloc))
    return redacted if "://" in url else redacted.removeprefix("//")


def url_secret(url: str) -> str | None:
    """The credential inside a URL (password, or a bare userinfo used as a token), if any."""
    parts = urlsplit(url if "://" in url else f"//{url}")
    if parts.password:
        return parts.password
    userinfo = parts.netloc.rpartition("@")[0]
    return userinfo or None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Settings(BaseSettings):
    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True)

    # None: 0.0.0.0 when clients must authenticate (AUTH_TOKENS or mTLS), else loopback only.
    grpc_host: str | None = None
    allow_unauthenticated: bool = False
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_client_ca_file: str | None = None
    grpc_port: Port = 50051
    # The OpenAI-compatible HTTP API; 0: off. HTTP_HOST None: GRPC_HOST's safe default.
    http_host: str | None = None
    http_port: Port = 8080
    metrics_port: Port = 9090
    redis_addr: Annotated[str, AfterValidator(_redis_addr)] = "localhost:6379"
    qdrant_url: HttpUrl = "http://localhost:6333"
    qdrant_collection: str = "llm_cache"
    similarity_threshold: float = Field(0.95, ge=0.0, le=1.0)
    cache_ttl: PositiveDuration = 3600.0
    request_timeout: PositiveDuration = 30.0
    max_retries: int = Field(3, ge=0, le=20)
    cb_failure_threshold: int = Field(5, ge=1)
    cb_cooldown: Duration = 30.0
    cb_half_open_probes: int = Field(1, ge=1)
    embedding_api_key: SecretStr | None = None
    embedding_base_url: ProviderUrl | None = None
    cache_mode: Literal["embedded", "remote", "off"] = "embedded"
    cache_dir: str = "data/cache"
    embedder: Literal["local", "openai", "gemini"] | None = None
    embedding_model: str | None = None
    embedding_dimensions: int | None = Field(None, ge=1)
    cache_max_entries: int = Field(100_000, ge=1)
    cache_sweep_interval: PositiveDuration = 300.0
    openai_api_keys: Keys = ()
    gemini_api_keys: Keys = ()
    anthropic_api_keys: Keys = ()
    openai_base_url: ProviderUrl = "https://api.openai.com/v1"
    gemini_base_url: ProviderUrl = "https://generativelanguage.googleapis.com"
    anthropic_base_url: ProviderUrl = "https://api.anthropic.com"
    openai_connect_timeout: PositiveDuration = 5.0
    openai_read_timeout: PositiveDuration = 300.0
    openai_stream_idle_timeout: PositiveDuration = 30.0
    gemini_connect_timeout: PositiveDuration = 5.0
    gemini_read_timeout: PositiveDuration = 300.0
    gemini_stream_idle_timeout: PositiveDuration = 30.0
    anthropic_connect_timeout: PositiveDuration = 5.0
    anthropic_read_timeout: PositiveDuration = 300.0
    anthropic_stream_idle_timeout: PositiveDuration = 30.0
    # max_tokens sent to Anthropic (which requires it) when a request gives none
    anthropic_max_tokens: int = Field(4096, ge=1, le=MAX_OUTPUT_TOKENS)
    upstream_max_connections: int = Field(100, ge=1)
    # 0: no per-attempt limit (an attempt may use the whole REQUEST_TIMEOUT)
    upstream_timeout: Duration = 0.0
    max_response_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    auth_tokens: Keys = ()
    retry_wait_initial: Duration = 0.2
    retry_wait_max: Duration = 5.0
    key_cooldown_default: Duration = 30.0
    cache_timeout: PositiveDuration = 0.25
    cache_index_backlog: int = Field(10_000, ge=1)
    cache_embed_max_cpu: float = Field(0.5, gt=0.0, le=1.0)
    cache_embed_nice: int = Field(10, ge=0, le=19)
    model_routes: Annotated[dict[str, Route], NoDecode, BeforeValidator(_parse_routes)] = Field(
        default_factory=dict
    )
    model_fallbacks: Annotated[
        dict[str, tuple[str, ...]], NoDecode, BeforeValidator(_parse_fallbacks)
    ] = Field(default_factory=dict)
    max_request_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    max_messages: int = Field(1000, ge=1)
    max_model_name_length: int = Field(128, ge=1, le=4096)
    max_concurrent_requests: Limit = 1000
    tenant_rate_limit: float = Field(0.0, ge=0)  # requests/s per tenant; 0: no limit
    tenant_rate_burst: Limit = 0  # 0: the rate, rounded up
    # Where key cooldowns, tenant rate limits and usage live: this process, or Redis (shared).
    state_backend: Literal["local", "redis"] = "local"
    state_timeout: PositiveDuration = 0.05
    tenant_token_budget: Annotated[Budget | None, BeforeValidator(_parse_budget)] = None
    tenant_budgets: Annotated[dict[str, Budget], NoDecode, BeforeValidator(_parse_budgets)] = Field(
        default_factory=dict
    )
    shutdown_grace: Duration = 10.0
    # Slow and hostile clients (docs/security.md): a body must arrive within HTTP_BODY_TIMEOUT
    # (never past the request's deadline), all bodies being read at once hold at most
    # MAX_BUFFERED_BYTES, a connection must send its request head within HTTP_HEADER_TIMEOUT and
    # may idle HTTP_IDLE_TIMEOUT between requests; MAX_CONNECTIONS per port (HTTP and gRPC).
    http_body_timeout: PositiveDuration = 10.0
    max_buffered_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    http_header_timeout: PositiveDuration = 10.0
    http_idle_timeout: PositiveDuration = 60.0
    max_connections: int = Field(4096, ge=1)
    grpc_max_connection_idle: PositiveDuration = 300.0
    grpc_max_connection_age: PositiveDuration = 1800.0
    # Origins (scheme://host[:port]) whose browser pages may call the HTTP API; none by default.
    http_allowed_origins: Annotated[
        tuple[str, ...], NoDecode, BeforeValidator(_split), AfterValidator(_origins)
    ] = ()
    workers: int | None = Field(None, ge=1, le=256)  # None: the CPU quota (supervisor.py)
    # set by the supervisor for its workers (prometheus-client's own variable)
    prometheus_multiproc_dir: str | None = None
    log_level: str = Field("INFO", pattern=r"(?i)^(debug|info|warning|error)$")
    log_format: Literal["json", "text"] | None = None  # None: text on a terminal, else JSON

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            yield name, redact_url(value) if name in _URL_SECRETS else value

    def secrets(self) -> tuple[str, ...]:
        """Every configured secret, for the filters that blank them in logs and spans should one
        leak: keys, client tokens, and credentials inside REDIS_ADDR and QDRANT_URL."""
        extra = (self.embedding_api_key,) if self.embedding_api_key else ()
        keys = (*self.openai_api_keys, *self.gemini_api_keys, *self.anthropic_api_keys, *extra)
        in_urls = (url_secret(getattr(self, name)) for name in _URL_SECRETS)
        tokens = (token for _, token in self.named_tokens())
        return (*(k.get_secret_value() for k in keys), *tokens, *filter(None, in_urls))

    @property
    def host(self) -> str:
        """The address gRPC (and metrics) bind to: GRPC_HOST, or its safe default."""
        return self.grpc_host or self._safe_host

    @property
    def http_bind_host(self) -> str:
        """The address the OpenAI-compatible HTTP API binds to: HTTP_HOST, or the safe default."""
        return self.http_host or self._safe_host

    @property
    def _safe_host(self) -> str:
        return "0.0.0.0" if self.authenticates else "127.0.0.1"

    def listeners(self) -> tuple[tuple[str, str, int], ...]:
        """(host setting, host, port) of each client-facing listener that is on."""
        grpc = ("GRPC_HOST", self.host, self.grpc_port)
        if not self.http_port:
            return (grpc,)
        return grpc, ("HTTP_HOST", self.http_bind_host, self.http_port)

    @property
    def worker_count(self) -> int:
        return self.workers or cpu_quota()

    @property
    def authenticates(self) -> bool:
        """Clients prove who they are: a bearer token, or a client certificate (mTLS)."""
        return bool(self.auth_tokens or self.tls_client_ca_file)

    @property
    def embedding_url(self) -> str:
        return self.embedding_base_url or EMBEDDING_BASE_URLS.get(self.embedder_kind, "")

    @property
    def tenant_burst(self) -> int:
        return self.tenant_rate_burst or max(1, math.ceil(self.tenant_rate_limit))

    @model_validator(mode="after")
    def _public_bind_needs_auth(self) -> Settings:
        if self.authenticates or self.allow_unauthenticated:
            return self
        for setting, host, _ in self.listeners():
            if is_loopback(host):
                continue
            raise ValueError(
                f"{setting}={host} serves beyond this machine but no client must "
                "authenticate: set AUTH_TOKENS (or TLS_CLIENT_CA_FILE for mTLS), or set "
                "ALLOW_UNAUTHENTICATED=true if something in front of the proxy (a mesh, a "
                "gateway) authenticates clients"
            )
        return self

    @model_validator(mode="after")
    def _tls_files_are_usable(self) -> Settings:
        cert, key, ca = self.tls_cert_file, self.tls_key_file, self.tls_client_ca_file
        if bool(cert) != bool(key):
            raise ValueError("TLS_CERT_FILE and TLS_KEY_FILE go together: set both or neither")
        if ca and not cert:
            raise ValueError("TLS_CLIENT_CA_FILE (mTLS) needs TLS_CERT_FILE and TLS_KEY_FILE")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        if cert and key:
            try:
                context.load_cert_chain(cert, key)
            except (OSError, ssl.SSLError) as error:
                raise ValueError(
                    f"TLS_CERT_FILE={cert} / TLS_KEY_FILE={key}: not a readable PEM certificate "
                    f"and the private key that matches it ({_reason(error)})"
                ) from None
        if ca:
            try:
                context.load_verify_locations(cafile=ca)
            except (OSError, ssl.SSLError) as error:
                raise ValueError(
                    f"TLS_CLIENT_CA_FILE={ca}: not a readable PEM CA certificate ({_reason(error)})"
                ) from None
        return self

    def named_tokens(self) -> tuple[tuple[str, str], ...]:
        """(tenant name, token) of every AUTH_TOKENS entry."""
        return tuple(named_token(t.get_secret_value()) for t in self.auth_tokens)

    @property
    def tenant_names(self) -> tuple[str, ...]:
        """Every tenant a request can belong to: the label values of `tenant`."""
        return tuple(name for name, _ in self.named_tokens()) or (ANONYMOUS,)

    @property
    def budgets(self) -> Budgets:
        return Budgets(self.tenant_token_budget, self.tenant_budgets)

    @model_validator(mode="after")
    def _tenants_are_distinct_and_known(self) -> Settings:
        names = [name for name, _ in self.named_tokens()]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"AUTH_TOKENS: the tenant name(s) {', '.join(twice)} are given twice")
        tokens = [token for _, token in self.named_tokens()]
        if len(set(tokens)) != len(tokens):
            raise ValueError("AUTH_TOKENS: the same token is given to two tenants")
        if ANONYMOUS in names:
            raise ValueError(f"AUTH_TOKENS: {ANONYMOUS} is the name of the tenant without tokens")
        unknown = sorted(set(self.tenant_budgets) - set(self.tenant_names))
        if unknown:
            raise ValueError(
                f"TENANT_BUDGETS: {', '.join(unknown)} not a tenant of AUTH_TOKENS "
                f"(tenants: {', '.join(self.tenant_names)}); name one as name=token"
            )
        return self

    def api_keys(self, provider: str) -> tuple[str, ...]:
        keys = {
            "openai": self.openai_api_keys,
            "gemini": self.gemini_api_keys,
            "anthropic": self.anthropic_api_keys,
        }[provider]
        return tuple(k.get_secret_value() for k in keys)

    @property
    def checks_host(self) -> bool:
        """Without client authentication (and nothing in front said to do it), the HTTP API
        answers only a loopback Host: a DNS-rebinding page cannot read answers or the cache."""
        return not (self.authenticates or self.allow_unauthenticated)

    @property
    def body_timeout(self) -> float:
        """HTTP_BODY_TIMEOUT, never more than REQUEST_TIMEOUT."""
        return min(self.http_body_timeout, self.request_timeout)

    @property
    def attempt_timeout(self) -> float | None:
        """UPSTREAM_TIMEOUT, None when 0 (off) or when REQUEST_TIMEOUT would end first anyway."""
        if not self.upstream_timeout or self.upstream_timeout >= self.request_timeout:
            return None
        return self.upstream_timeout

    @model_validator(mode="after")
    def _fallbacks_route_somewhere(self) -> Settings:
        try:
            ModelRouter(PROVIDERS, self.model_routes, fallbacks=self.model_fallbacks)
        except ValueError as error:
            raise ValueError(f"MODEL_FALLBACKS: {error}") from None
        return self

    @property
    def configured_models(self) -> tuple[str, ...]:
        """Model names of MODEL_ROUTES and MODEL_FALLBACKS: metric labels of their own."""
        chains = self.model_fallbacks.items()
        return tuple(dict.fromkeys([*self.model_routes, *(m for k, c in chains for m in (k, *c))]))

    @model_validator(mode="after")
    def _embedder_has_a_key(self) -> Settings:
        if (
            self.cache_mode != "off"
            and self.embedder_kind != "local"
            and not (self.embedding_api_key)
        ):
            raise ValueError(
                f"EMBEDDING_API_KEY is required for EMBEDDER={self.embedder_kind} "
                "(or set EMBEDDER=local)"
            )
        return self

    @model_validator(mode="after")
    def _embedding_size_is_known(self) -> Settings:
        kind = self.embedder_kind
        if self.cache_mode == "off" or kind == "local" or self.embedding_dimensions:
            return self
        known = NATIVE_DIMENSIONS[kind]
        if self.embedding_model and self.embedding_model.removeprefix("models/") not in known:
            raise ValueError(
                f"EMBEDDING_MODEL={self.embedding_model} is not one whose vector size is known "
                f"({', '.join(known)}): set EMBEDDING_DIMENSIONS to its size"
            )
        return self

    @property
    def embedder_kind(self) -> str:
        """EMBEDDER, or its default: local for the embedded cache, openai for the remote one."""
        return self.embedder or ("local" if self.cache_mode == "embedded" else "openai")


def load_settings(**overrides: Any) -> Settings:
    try:
        return Settings(**overrides)
    except ValidationError as error:
        problems = [_problem(e["loc"], e["msg"]) for e in error.errors(include_input=False)]
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems)) from None


def _reason(error: OSError) -> str:
    if isinstance(error, ssl.SSLError):
        return str(error.reason or error)
    return error.strerror or type(error).__name__


def _problem(location: tuple[int | str, ...], message: str) -> str:
    message = message.removeprefix("Value error, ")
    variable = ".".join(str(part) for part in location).upper()
    return f"{variable}: {message}" if variable else message
