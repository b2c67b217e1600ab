"""Upstream outcomes as domain failures: one classification for every provider.

The messages built here may reach clients and logs, so they never hold a raw upstream body: only
the provider's own error message, with anything key-like redacted, bounded in length.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from adapters.outbound.providers.sse import SSEError, StreamStalled
from adapters.process.durations import parse_duration
from domain.errors import (
    ConnectionsExhausted,
    KeyRejected,
    MalformedAnswer,
    ProviderFailure,
    RateLimited,
    UpstreamFault,
    UpstreamRejected,
)
from domain.key_pool import ApiKey

REDACTED = "[redacted]"
MAX_MESSAGE_CHARS = 300
MAX_ERROR_BODY_BYTES = 64 * 1024
MAX_ANSWER_BYTES = 16 * 1024 * 1024
"""The default bound of one answer's bytes, unary or streamed (MAX_RESPONSE_BYTES)."""
MAX_TOKEN_COUNT = 2**31 - 1
"""Usage numbers travel as int32 in the API; a larger one is a bogus upstream number."""
POOL_FULL_RETRY_AFTER = 1.0
MAX_RETRY_AFTER = 86_400.0
"""A reset further away than a day is treated as a day: a bogus header must not bench a key."""

_KEY_PREFIXED = re.compile(r"(?<![A-Za-z0-9])(?:sk-|AIza)[A-Za-z0-9_\-*]*")
_BEARER = re.compile(r"(?i)\bbearer\s+\S+")
_TOKEN = re.compile(r"(?<![A-Za-z0-9+/=])[A-Za-z0-9+/=]{20,}")
_CONTROL = re.compile(r"\s+|[\x00-\x1f\x7f]")
_PROTO_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)s\s*")
_MIN_EXACT_KEY_CHARS = 4
_KEY_INVALID_REASONS = frozenset({"API_KEY_INVALID", "API_KEY_EXPIRED"})
_REASONS = {529: "Overloaded"}  # Anthropic's: a provider fault like 503


# --- redaction -------------------------------------------------------------------------------


def _redact_token(match: re.Match[str]) -> str:
    token = match.group(0)
    has_digit = any(c.isdigit() for c in token)
    has_letter = any(c.isalpha() for c in token)
    return REDACTED if has_digit and has_letter else token


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """`text` on one line with key-like tokens and the given secrets replaced by `[redacted]`.

    Key-like: `sk-...` (OpenAI, also its masked echo `sk-proj-****abcd`), `AIza...` (Google),
    `Bearer <token>`, and runs of 20+ base64/hex characters mixing letters and digits. Model
    names and words survive; the exact secrets are always removed (except placeholders shorter
    than 4 characters, which keyless local servers get and which would garble every message).
    """
    for secret in secrets:
        if len(secret) >= _MIN_EXACT_KEY_CHARS:
            text = text.replace(secret, REDACTED)
    text = _CONTROL.sub(" ", text)
    text = _KEY_PREFIXED.sub(REDACTED, text)
    text = _BEARER.sub(f"Bearer {REDACTED}", text)
    return _TOKEN.sub(_redact_token, text)


def safe_message(text: str, key: ApiKey | None = None, limit: int = MAX_MESSAGE_CHARS) -> str:
    """Redacted first, then cut, so a cut can never leave a key fragment unrecognised."""
    clean = redact(text, (key.value,) if key is not None else ()).strip()
    return clean if len(clean) <= limit else clean[: limit - 1].rstrip() + "…"


# --- durations -------------------------------------------------------------------------------


def _bounded(seconds: float) -> float | None:
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return min(seconds, MAX_RETRY_AFTER)


def parse_go_duration(text: str) -> float | None:
    """`1s`, `6m0s`, `250ms`, `1h2m3.5s` (as OpenAI's `x-ratelimit-reset-*`); a bare number is
    seconds (as some OpenAI-compatible servers send). None when unparseable."""
    try:
        return _bounded(parse_duration(text))
    except ValueError:
        return None


def parse_retry_after(value: str, now: datetime) -> float | None:
    """`Retry-After`: delay-seconds or an HTTP date (relative to `now`, an aware UTC datetime)."""
    value = value.strip()
    if not value:
        return None
    try:
        return _bounded(float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return _bounded(max(0.0, (when - now).total_seconds()))


def parse_proto_duration(value: object) -> float | None:
    """A google.protobuf.Duration in JSON: `"37s"`, `"0.5s"`."""
    if not isinstance(value, str):
        return None
    match = _PROTO_DURATION.fullmatch(value)
    return _bounded(float(match.group(1))) if match else None


# --- the body --------------------------------------------------------------------------------


def json_or_none(body: bytes | str) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return None


def _error_object(payload: Any) -> dict[str, Any]:
    if isinstance(payload, list) and payload:
        payload = payload[0]  # Gemini wraps errors of its JSON-array stream in a list
    if not isinstance(payload, dict):
        return {}
    error = payload.get("error")
    if isinstance(error, dict):
        return error
    return payload  # vLLM: {"object": "error", "message": ...}; Ollama: {"error": "..."}


def upstream_message(payload: Any) -> str | None:
    """The provider's own error text from its JSON error body, unredacted (redact before use)."""
    if isinstance(payload, list) and payload:
        payload = payload[0]
    if isinstance(payload, dict) and isinstance(payload.get("error"), str):
        return str(payload["error"]) or None
    error = _error_object(payload)
    message = error.get("message") or error.get("detail")
    if not isinstance(message, str) or not message.strip():
        return None
    labels = (error.get(name) for name in ("status", "code", "type"))
    label = next((x for x in labels if isinstance(x, str) and x), None)
    return f"{message} ({label})" if label and label not in message else message


def _details(payload: Any) -> list[dict[str, Any]]:
    details = _error_object(payload).get("details")
    return [d for d in details if isinstance(d, dict)] if isinstance(details, list) else []


def gemini_retry_delay(payload: Any) -> float | None:
    """`retryDelay` of a `type.googleapis.com/google.rpc.RetryInfo` error detail."""
    for detail in _details(payload):
        if str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
            delay = parse_proto_duration(detail.get("retryDelay"))
            if delay is not None:
                return delay
    return None


def _gemini_key_invalid(payload: Any) -> bool:
    """Gemini answers an invalid key with 400 INVALID_ARGUMENT and an ErrorInfo reason."""
    return any(
        str(detail.get("@type", "")).endswith("google.rpc.ErrorInfo")
        and detail.get("reason") in _KEY_INVALID_REASONS
        for detail in _details(payload)
    )


# --- headers ---------------------------------------------------------------------------------


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


def retry_after_header(headers: Mapping[str, str], now: datetime) -> float | None:
    """`retry-after-ms` (OpenAI, more precise) else `Retry-After`."""
    h = _lower(headers)
    if "retry-after-ms" in h:
        try:
            millis = _bounded(float(h["retry-after-ms"]) / 1000)
        except ValueError:
            millis = None
        if millis is not None:
            return millis
    return parse_retry_after(h["retry-after"], now) if "retry-after" in h else None


def ratelimit_reset(headers: Mapping[str, str]) -> float | None:
    """OpenAI's `x-ratelimit-reset-{requests,tokens}`: the exhausted limit's reset; when neither
    says it is exhausted (`x-ratelimit-remaining-*: 0`), the later of the two."""
    h = _lower(headers)
    resets: dict[str, float] = {}
    for kind in ("requests", "tokens"):
        raw = h.get(f"x-ratelimit-reset-{kind}")
        reset = parse_go_duration(raw) if raw is not None else None
        if reset is not None:
            resets[kind] = reset
    if not resets:
        return None
    exhausted = [
        reset for kind, reset in resets.items() if h.get(f"x-ratelimit-remaining-{kind}") == "0"
    ]
    return max(exhausted or resets.values())


def anthropic_ratelimit_reset(headers: Mapping[str, str], now: datetime) -> float | None:
    """Anthropic's `anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-reset`
    (RFC 3339 instants): the exhausted limit's reset (`...-remaining: 0`), else the latest."""
    h = _lower(headers)
    resets: dict[str, float] = {}
    for kind in ("requests", "tokens", "input-tokens", "output-tokens"):
        raw = h.get(f"anthropic-ratelimit-{kind}-reset")
        if raw is None:
            continue
        try:
            when = datetime.fromisoformat(raw.strip().replace("Z", "+00:00"))
        except ValueError:
            continue
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        wait = _bounded(max(0.0, (when - now).total_seconds()))
        if wait is not None:
            resets[kind] = wait
    if not resets:
        return None
    exhausted = [
        reset
        for kind, reset in resets.items()
        if h.get(f"anthropic-ratelimit-{kind}-remaining") == "0"
    ]
    return max(exhausted or resets.values())


def rate_limit_wait(headers: Mapping[str, str], payload: Any, now: datetime) -> float | None:
    """When a 429'd key may be used again: the explicit hint first, then the limits' resets."""
    for wait in (
        retry_after_header(headers, now),
        gemini_retry_delay(payload),
        ratelimit_reset(headers),
        anthropic_ratelimit_reset(headers, now),
    ):
        if wait is not None:
            return wait
    return None


# --- classification --------------------------------------------------------------------------


def classify_status(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    provider: str,
    key: ApiKey,
    now: datetime,
) -> ProviderFailure:
    """The failure an unsuccessful HTTP response stands for (status is not 2xx)."""
    reason = httpx.codes.get_reason_phrase(status) or _REASONS.get(status, "unknown status")
    return _classify(
        status, f"HTTP {status} {reason}", headers, json_or_none(body), provider, key, now
    )


def classify_stream_error(
    payload: Any, *, provider: str, key: ApiKey, now: datetime, status: int | None = None
) -> ProviderFailure:
    """An error object sent inside a 200 event stream: `status` when the adapter knows the HTTP
    status it stands for, else its `code` when an HTTP status; without one it is the
    provider's fault."""
    code = status if status is not None else _error_object(payload).get("code")
    status = code if isinstance(code, int) and 400 <= code <= 599 else 500
    label = f"error event (code {code})" if status == code else "error event"
    return _classify(status, label, {}, payload, provider, key, now)


def _classify(
    status: int,
    label: str,
    headers: Mapping[str, str],
    payload: Any,
    provider: str,
    key: ApiKey,
    now: datetime,
) -> ProviderFailure:
    said = upstream_message(payload)
    detail = safe_message(label + (f": {said}" if said else ""), key)
    if status == 429:
        wait = rate_limit_wait(headers, payload, now)
        return RateLimited(f"{provider} rate-limited {key.fingerprint}: {detail}", wait)
    if status in (401, 403) or (status == 400 and _gemini_key_invalid(payload)):
        return KeyRejected(f"{provider} rejected {key.fingerprint}: {detail}")
    if status == 408 or status >= 500:
        return UpstreamFault(f"{provider} failed: {detail}", retry_after_header(headers, now))
    if 400 <= status < 500:
        return UpstreamRejected(f"{provider} refused the request: {detail}")
    return UpstreamFault(f"{provider} answered with an unexpected {detail}")


async def read_limited(response: httpx.Response, limit: int) -> bytes | None:
    """The (decompressed) body, or None once it grows past `limit` bytes."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def raise_for_outcome(
    response: httpx.Response, *, provider: str, key: ApiKey, now: datetime
) -> None:
    """Raises the classified failure unless the status is 2xx (reads at most 64 KiB of body)."""
    if response.is_success:
        return
    body = await read_limited(response, MAX_ERROR_BODY_BYTES) or b""
    raise classify_status(
        response.status_code, response.headers, body, provider=provider, key=key, now=now
    )


def malformed(provider: str, what: str) -> MalformedAnswer:
    return MalformedAnswer(f"{provider} sent a malformed answer: {what}")


def token_count(value: object, provider: str, field: str) -> int:
    """A usage number: absent or not an integer is 0 (compatible servers may leave usage out);
    negative or past int32 is a malformed answer, never passed on nor cached."""
    if not isinstance(value, int) or isinstance(value, bool):
        return 0
    if not 0 <= value <= MAX_TOKEN_COUNT:
        raise malformed(provider, f"usage {field} is out of range ({value})")
    return value


def transport_failure(exc: Exception, *, provider: str, key: ApiKey) -> ProviderFailure:
    """Timeouts, connection errors, stalls and undecodable streams are the provider's fault;
    a full connection pool is the proxy's own limit (never the provider's failure)."""
    if isinstance(exc, httpx.PoolTimeout):
        return ConnectionsExhausted(
            f"the proxy's connections to {provider} are all busy (UPSTREAM_MAX_CONNECTIONS); "
            f"retry after {POOL_FULL_RETRY_AFTER:g}s",
            POOL_FULL_RETRY_AFTER,
        )
    if isinstance(exc, StreamStalled):
        return UpstreamFault(f"{provider} stream stalled: {exc}")
    if isinstance(exc, SSEError):
        return malformed(provider, safe_message(str(exc), key))
    if isinstance(exc, httpx.DecodingError):
        return malformed(provider, "the body could not be decoded (content encoding)")
    for kind, words in _TRANSPORT_WORDS:
        if isinstance(exc, kind):
            return UpstreamFault(f"{provider} {words}")
    return UpstreamFault(f"{provider} connection failed")


# httpx's exceptions in the domain's words: the exception's own text (a library's, holding
# protocol internals such as "<TransferEncodingError: 400 ...>") never reaches a client.
_TRANSPORT_WORDS: tuple[tuple[type[Exception], str], ...] = (
    (httpx.ConnectTimeout, "timed out: no connection within the connect timeout"),
    (httpx.ReadTimeout, "timed out: nothing received within the read timeout"),
    (httpx.TimeoutException, "timed out"),
    (httpx.ConnectError, "connection failed: the server could not be reached"),
    (httpx.RemoteProtocolError, "connection failed: the answer broke off (protocol error)"),
    (httpx.ReadError, "connection failed: the connection was lost while reading the answer"),
    (httpx.WriteError, "connection failed: the connection was lost while sending the request"),
)


def utcnow() -> datetime:
    return datetime.now(UTC)


def vectors_of(items: list[Any], provider: str) -> tuple[tuple[float, ...], ...]:
    """Embedding vectors as the provider sent them (never rescaled: a gateway passes them on),
    each a list of finite numbers, all of one length."""
    vectors: list[tuple[float, ...]] = []
    for item in items:
        if (
            not isinstance(item, list)
            or not item
            or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in item)
        ):
            raise malformed(provider, "an embedding is not a list of numbers")
        vector = tuple(float(x) for x in item)
        if not all(math.isfinite(x) for x in vector):
            raise malformed(provider, "an embedding has a number that is not finite")
        vectors.append(vector)
    if len({len(v) for v in vectors}) > 1:
        raise malformed(provider, "the embeddings have different lengths")
    return tuple(vectors)
