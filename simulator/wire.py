"""Shared wire-level types of the simulator: parsed requests, API errors, JSON helpers."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web


class ApiError(Exception):
    """A request the provider would reject; rendered in the provider's error shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """A chat / generateContent request, provider-neutral.

    ``turns`` are (role, text) pairs with simulator markers removed; the system
    instruction is a ``("system", text)`` turn. ``marker_texts`` are the raw texts that
    may carry ``[[sim:...]]`` markers.
    """

    model: str
    turns: tuple[tuple[str, str], ...]
    last_user_text: str
    max_tokens: int | None
    stream: bool
    include_usage: bool
    marker_texts: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class EmbeddingRequest:
    """One or several texts to embed, provider-neutral (markers removed from ``texts``).

    ``dimensions`` has one entry per text (None: the configured default).
    """

    model: str
    texts: tuple[str, ...]
    dimensions: tuple[int | None, ...]
    encoding: str
    marker_texts: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RateState:
    """Where a key stands in its request window (for OpenAI's ``x-ratelimit-*`` headers)."""

    limit: int
    remaining: int
    reset_s: float


@dataclass(frozen=True, slots=True)
class StreamStyle:
    """How stream events are framed: SSE ``data:`` events or a streamed JSON array."""

    content_type: str
    json_array: bool = False
    separator: bytes = b"\n\n"
    done_marker: bytes | None = None
    named_events: bool = False  # an `event: <type>` line before each `data:` (Anthropic)

    def frame(self, payload: bytes, index: int) -> bytes:
        if self.json_array:
            return (b"[" if index == 0 else b",\r\n") + payload
        if self.named_events:
            try:
                kind = str(json.loads(payload).get("type", "message")).encode()
            except (ValueError, AttributeError):
                kind = b"message"  # a malformed (cut) event: its name is lost as well
            return b"event: " + kind + b"\n" + b"data: " + payload + self.separator
        return b"data: " + payload + self.separator

    def end(self, sent: int, *, after_error: bool = False) -> bytes:
        if self.json_array:
            return b"]" if sent else b"[]"
        if self.done_marker is None or after_error:
            return b""
        return b"data: " + self.done_marker + self.separator


class Dialect(Protocol):
    """How one provider authenticates and shapes its errors."""

    provider: str

    def extract_key(self, request: web.Request) -> str | None: ...

    def missing_key(self) -> web.Response: ...

    def invalid_key(self, key: str, *, real: bool) -> web.Response: ...

    def rate_limited(
        self, retry_after_s: float, *, model: str | None, limit: int | None
    ) -> web.Response: ...

    def quota_exceeded(self, model: str | None) -> web.Response: ...

    def error(self, status: int) -> web.Response: ...

    def invalid_json(self) -> ApiError: ...

    def model_not_found(self, model: str, action: str) -> ApiError: ...

    def api_error(self, err: ApiError) -> web.Response: ...

    def stream_error_payload(self) -> bytes: ...

    def success_headers(self, rate: RateState | None) -> dict[str, str]: ...


def json_response(
    payload: Mapping[str, Any] | list[Any],
    status: int = 200,
    *,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """A JSON response pretty-printed like both providers print unary bodies."""
    return web.Response(
        status=status,
        body=dump_pretty(payload),
        content_type="application/json",
        charset="utf-8",
        headers=dict(headers or {}),
    )


def dump_pretty(payload: Mapping[str, Any] | list[Any]) -> bytes:
    return json.dumps(payload, indent=2, ensure_ascii=False).encode("utf-8")


def dump_compact(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def gateway_html(status: int) -> web.Response:
    """A 502/504 as an edge proxy sends it: an HTML page, not the API's JSON."""
    reason = {502: "Bad Gateway", 504: "Gateway Timeout"}.get(status, "Error")
    body = (
        f"<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n"
        f"<center><h1>{status} {reason}</h1></center>\r\n<hr><center>simulator</center>\r\n"
        "</body>\r\n</html>\r\n"
    )
    return web.Response(status=status, text=body, content_type="text/html")


def body_fault(name: str, *, streaming: bool) -> web.Response:
    """A 200 whose body is not what the API sends, as a misrouted or broken upstream answers:
    ``html`` a login or captive-portal page (``text/html``, also to a stream request), ``empty``
    no body at all (the stream's content type on a stream request), ``garbage`` bytes that are
    not JSON (on a stream request, SSE frames whose data is not JSON, with no ``[DONE]``)."""
    if name == "html":
        page = (
            "<!DOCTYPE html>\n<html><head><title>Sign in</title></head>"
            "<body>simulator</body></html>\n"
        )
        return web.Response(status=200, text=page, content_type="text/html")
    content_type = "text/event-stream" if streaming else "application/json"
    if name == "empty":
        return web.Response(status=200, body=b"", content_type=content_type)
    if streaming:
        garbage = b'data: <<not json>>\n\ndata: \x00\x01\x02\n\ndata: {"choices": [\n\n'
    else:
        garbage = b'<<not json>> \x00\x01\x02 {"choices": ['
    return web.Response(status=200, body=garbage, content_type=content_type)


def go_duration(seconds: float) -> str:
    """A duration as OpenAI's ``x-ratelimit-reset-*`` headers print it: 20ms, 1s, 6m0s."""
    if seconds < 1:
        return f"{max(round(seconds * 1000), 0)}ms"
    if seconds < 60:
        return f"{round(seconds, 3):g}s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{round(rest, 3):g}s"


def proto_duration(seconds: float) -> str:
    """A duration in protobuf JSON form as in ``RetryInfo.retryDelay``: ``37s``, ``0.5s``."""
    return f"{round(seconds, 3):g}s"


def retry_after_header(seconds: float) -> str:
    """``Retry-After`` takes whole seconds; round up so a client never retries too early."""
    return str(max(math.ceil(seconds), 0))


def text_of(value: Any) -> str | None:
    """A string field, or None when absent / not a string."""
    return value if isinstance(value, str) else None


def optional_int(
    body: Mapping[str, Any], name: str, *, minimum: int, param: str | None = None
) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, f"Invalid type for '{param or name}': expected an integer.", param=name)
    if value < minimum:
        raise ApiError(
            400,
            f"Invalid '{param or name}': integer below minimum value. "
            f"Expected a value >= {minimum}, but got {value} instead.",
            param=name,
            code="integer_below_min_value",
        )
    return value


def optional_number(
    body: Mapping[str, Any], name: str, *, minimum: float, maximum: float
) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ApiError(400, f"Invalid type for '{name}': expected a number.", param=name)
    if not minimum <= value <= maximum:
        raise ApiError(
            400,
            f"Invalid '{name}': {value} is out of range [{minimum:g}, {maximum:g}].",
            param=name,
        )
    return float(value)
