"""Anthropic Messages API (`POST {base_url}/v1/messages`), unary and streamed.

The system prompt is the top-level `system` (every system message, wherever it stands, joined
as Gemini's system instruction is); consecutive turns of one role are merged. `max_tokens`,
required by Anthropic, is `default_max_tokens` (ANTHROPIC_MAX_TOKENS) when the request has none.
A conversation may end with an assistant turn: Anthropic continues it (a prefill). Overloaded
(529, or an `overloaded_error` event mid-stream) is a provider fault, retried like a 503.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx

from adapters.outbound.providers.errors import (
    MAX_ANSWER_BYTES,
    classify_stream_error,
    json_or_none,
    malformed,
    token_count,
    utcnow,
)
from adapters.outbound.providers.exchange import post_json, post_sse
from application.ports import ModelInfo, Provider
from domain.errors import UpstreamFault, UpstreamRejected
from domain.key_pool import ApiKey
from domain.model import (
    Completion,
    Delta,
    EmbeddingRequest,
    Embeddings,
    FinishReason,
    InferenceRequest,
    Role,
    StreamEnd,
    StreamEvent,
    Usage,
)

DEFAULT_BASE_URL = "https://api.anthropic.com"
API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096

_FINISH = {
    "end_turn": FinishReason.STOP,
    "stop_sequence": FinishReason.STOP,
    "max_tokens": FinishReason.LENGTH,
    "model_context_window_exceeded": FinishReason.LENGTH,
    "refusal": FinishReason.CONTENT_FILTER,
}
# an error event's `type` -> the HTTP status Anthropic sends it with
_ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "overloaded_error": 529,
}


def finish_reason(value: object) -> FinishReason:
    return _FINISH.get(value, FinishReason.OTHER) if isinstance(value, str) else FinishReason.OTHER


@dataclass(slots=True)
class _Progress:
    model: str
    input_tokens: int = 0
    output_tokens: int = 0
    finish: FinishReason | None = None
    stopped: bool = False
    texts: list[str] = field(default_factory=list)


class AnthropicProvider(Provider):
    """`base_url` without the version (`https://api.anthropic.com`, as the Anthropic SDK takes
    it). The key travels in `x-api-key` and appears in no repr."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        base_url: str = DEFAULT_BASE_URL,
        default_max_tokens: int = DEFAULT_MAX_TOKENS,
        stream_idle_timeout: float = 30.0,
        max_response_bytes: int = MAX_ANSWER_BYTES,
        name: str = "anthropic",
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        if stream_idle_timeout <= 0:
            raise ValueError("stream_idle_timeout must be positive")
        self.name = name
        self._client = client
        self._url = base_url.rstrip("/") + "/v1/messages"
        self._models_url = base_url.rstrip("/") + "/v1/models?limit=1000"
        self._max_tokens = default_max_tokens
        self._idle = stream_idle_timeout
        self._max_bytes = max_response_bytes
        self._now = now

    def __repr__(self) -> str:
        return f"AnthropicProvider(name={self.name!r}, url={self._url!r})"

    def body(self, request: InferenceRequest, *, stream: bool) -> dict[str, Any]:
        if request.temperature is not None and request.temperature > 1:
            raise UpstreamRejected(
                f"{self.name} takes temperature within [0, 1], got {request.temperature:g}",
                "temperature",
            )
        messages: list[dict[str, Any]] = []
        for message in request.messages:
            if message.role is Role.SYSTEM:
                continue
            role = message.role.value
            if messages and messages[-1]["role"] == role:
                messages[-1]["content"] += "\n\n" + message.content
            else:
                messages.append({"role": role, "content": message.content})
        if messages and messages[-1]["role"] == "assistant":
            # Anthropic refuses a prefill that ends in whitespace
            messages[-1]["content"] = messages[-1]["content"].rstrip()
        body: dict[str, Any] = {
            "model": request.model,
            "max_tokens": request.max_tokens or self._max_tokens,
            "messages": messages,
        }
        if request.system is not None:
            body["system"] = request.system
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if stream:
            body["stream"] = True
        return body

    @staticmethod
    def _headers(key: ApiKey) -> dict[str, str]:
        return {"x-api-key": key.value, "anthropic-version": API_VERSION}

    async def complete(self, request: InferenceRequest, key: ApiKey) -> Completion:
        payload = await post_json(
            self._client, self._url, self.body(request, stream=False), self._headers(key),
            provider=self.name, key=key, now=self._now(), max_bytes=self._max_bytes,
        )  # fmt: skip
        if not isinstance(payload, dict) or payload.get("type") != "message":
            raise malformed(self.name, "the answer is not a message object")
        content = payload.get("content")
        if not isinstance(content, list):
            raise malformed(self.name, "the message has no content list")
        usage = payload.get("usage")
        usage = usage if isinstance(usage, dict) else {}
        return Completion(
            content="".join(_text(block) for block in content),
            model=_model_of(payload, request.model),
            provider=self.name,
            finish_reason=finish_reason(payload.get("stop_reason")),
            usage=Usage(
                token_count(usage.get("input_tokens"), self.name, "input_tokens"),
                token_count(usage.get("output_tokens"), self.name, "output_tokens"),
            ),
        )

    async def stream(
        self, request: InferenceRequest, key: ApiKey
    ) -> AsyncGenerator[StreamEvent, None]:
        progress = _Progress(model=request.model)
        events = post_sse(
            self._client, self._url, self.body(request, stream=True), self._headers(key),
            provider=self.name, key=key, now=self._now(), idle_timeout=self._idle,
            max_bytes=self._max_bytes,
        )  # fmt: skip
        async with aclosing(events):
            async for event in events:
                text = self._read(event.event, event.data, progress, key)
                if text:
                    yield Delta(text)
                if progress.stopped:
                    break
        if not progress.stopped:
            raise UpstreamFault(f"{self.name} stream ended before message_stop (truncated)")
        if progress.finish is None:
            raise UpstreamFault(f"{self.name} stream ended without a stop_reason (truncated)")
        usage = Usage(progress.input_tokens, progress.output_tokens)
        yield StreamEnd(progress.model, progress.finish, usage)

    def _read(self, name: str, data: str, progress: _Progress, key: ApiKey) -> str:
        """One event: its text delta, with what it says about the message kept in `progress`."""
        payload = json_or_none(data)
        kind = payload.get("type") if isinstance(payload, dict) else None
        if name == "error" or kind == "error":
            error = payload.get("error") if isinstance(payload, dict) else None
            kind = error.get("type") if isinstance(error, dict) else None
            status = _ERROR_STATUS.get(kind, 500) if isinstance(kind, str) else 500
            raise classify_stream_error(
                payload, provider=self.name, key=key, now=self._now(), status=status
            )
        if not isinstance(payload, dict):
            raise malformed(self.name, "a stream event is not a JSON object")
        if kind == "message_start":
            message = payload.get("message")
            message = message if isinstance(message, dict) else {}
            progress.model = _model_of(message, progress.model)
            usage = message.get("usage")
            if isinstance(usage, dict):
                progress.input_tokens = token_count(
                    usage.get("input_tokens"), self.name, "input_tokens"
                )
        elif kind == "content_block_delta":
            delta = payload.get("delta")
            if isinstance(delta, dict) and delta.get("type") == "text_delta":
                text = delta.get("text")
                if not isinstance(text, str):
                    raise malformed(self.name, "a text delta has no text")
                return text
        elif kind == "message_delta":
            delta = payload.get("delta")
            if isinstance(delta, dict) and delta.get("stop_reason"):
                progress.finish = finish_reason(delta["stop_reason"])
            usage = payload.get("usage")
            if isinstance(usage, dict) and usage.get("output_tokens") is not None:
                progress.output_tokens = token_count(
                    usage.get("output_tokens"), self.name, "output_tokens"
                )
        elif kind == "message_stop":
            progress.stopped = True
        return ""  # ping, content_block_start/stop, and event types added later

    async def models(self, key: ApiKey) -> list[ModelInfo]:
        payload = await post_json(
            self._client, self._models_url, None, self._headers(key), provider=self.name,
            key=key, now=self._now(), max_bytes=self._max_bytes, method="GET",
        )  # fmt: skip
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, list):
            raise malformed(self.name, "the model list has no data")
        return [
            ModelInfo(m["id"], _epoch(m.get("created_at")))
            for m in data
            if isinstance(m, dict) and isinstance(m.get("id"), str)
        ]

    async def embed(self, request: EmbeddingRequest, key: ApiKey) -> Embeddings:
        raise UpstreamRejected(
            f"{self.name} has no embeddings API: use an OpenAI or Gemini embedding model",
            "model",
        )


def _text(block: object) -> str:
    if isinstance(block, dict) and block.get("type") == "text":
        text = block.get("text")
        return text if isinstance(text, str) else ""
    return ""  # thinking and tool blocks are not the answer's text


def _model_of(payload: dict[str, Any], fallback: str) -> str:
    model = payload.get("model")
    return model if isinstance(model, str) and model else fallback


def _epoch(value: object) -> int | None:
    if not isinstance(value, str):
        return None
    try:
        return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return None
