"""OpenAI Chat Completions, and every server that speaks it (vLLM, Ollama, LM Studio, ...)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import httpx

from adapters.outbound.providers.errors import (
    MAX_ANSWER_BYTES,
    classify_stream_error,
    json_or_none,
    malformed,
    token_count,
    utcnow,
    vectors_of,
)
from adapters.outbound.providers.exchange import post_json, post_sse
from application.ports import ModelInfo, Provider
from domain.errors import UpstreamFault
from domain.key_pool import ApiKey
from domain.model import (
    Completion,
    Delta,
    EmbeddingRequest,
    Embeddings,
    FinishReason,
    InferenceRequest,
    StreamEnd,
    StreamEvent,
    Usage,
)

DEFAULT_BASE_URL = "https://api.openai.com/v1"

_FINISH = {
    "stop": FinishReason.STOP,
    "length": FinishReason.LENGTH,
    "content_filter": FinishReason.CONTENT_FILTER,
}

MaxTokensField = Literal["max_tokens", "max_completion_tokens"]


def finish_reason(value: object) -> FinishReason:
    return _FINISH.get(value, FinishReason.OTHER) if isinstance(value, str) else FinishReason.OTHER


def usage_of(value: object, provider: str = "openai") -> Usage:
    """OpenAI-compatible servers may leave `usage` out or null: zero tokens then."""
    if not isinstance(value, dict):
        return Usage()
    return Usage(
        token_count(value.get("prompt_tokens"), provider, "prompt_tokens"),
        token_count(value.get("completion_tokens"), provider, "completion_tokens"),
    )


def _model_of(payload: dict[str, Any], fallback: str) -> str:
    model = payload.get("model")
    return model if isinstance(model, str) and model else fallback


def max_tokens_field_for(base_url: str) -> MaxTokensField:
    """OpenAI itself wants `max_completion_tokens` (its reasoning models refuse `max_tokens`);
    OpenAI-compatible servers (vLLM, Ollama, LM Studio) know `max_tokens` best."""
    official = base_url.rstrip("/").startswith("https://api.openai.com")
    return "max_completion_tokens" if official else "max_tokens"


@dataclass(slots=True)
class _Progress:
    model: str
    finish: FinishReason | None = None
    usage: Usage = field(default_factory=Usage)
    done: bool = False


class OpenAIProvider(Provider):
    """`POST {base_url}/chat/completions`; `base_url` includes the version, as in the OpenAI SDK
    (`https://api.openai.com/v1`, vLLM `http://host:8000/v1`, Ollama `http://host:11434/v1`).

    `max_tokens_field`: OpenAI's reasoning models (o-series, gpt-5) accept only
    `max_completion_tokens`; compatible servers know `max_tokens` best.
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        base_url: str = DEFAULT_BASE_URL,
        stream_idle_timeout: float = 30.0,
        max_response_bytes: int = MAX_ANSWER_BYTES,
        name: str = "openai",
        max_tokens_field: MaxTokensField = "max_tokens",
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        if stream_idle_timeout <= 0:
            raise ValueError("stream_idle_timeout must be positive")
        self.name = name
        self._client = client
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._models_url = base_url.rstrip("/") + "/models"
        self._embeddings_url = base_url.rstrip("/") + "/embeddings"
        self._idle = stream_idle_timeout
        self._max_bytes = max_response_bytes
        self._max_tokens_field = max_tokens_field
        self._now = now

    def __repr__(self) -> str:
        return f"OpenAIProvider(name={self.name!r}, url={self._url!r})"

    def body(self, request: InferenceRequest, *, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": request.model,
            "messages": [{"role": m.role.value, "content": m.content} for m in request.messages],
        }
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.max_tokens is not None:
            body[self._max_tokens_field] = request.max_tokens
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body

    @staticmethod
    def _headers(key: ApiKey) -> dict[str, str]:
        return {"Authorization": f"Bearer {key.value}"}

    async def complete(self, request: InferenceRequest, key: ApiKey) -> Completion:
        payload = await post_json(
            self._client, self._url, self.body(request, stream=False), self._headers(key),
            provider=self.name, key=key, now=self._now(), max_bytes=self._max_bytes,
        )  # fmt: skip
        return self._completion(payload, request.model)

    async def models(self, key: ApiKey) -> list[ModelInfo]:
        payload = await post_json(
            self._client, self._models_url, None, self._headers(key), provider=self.name,
            key=key, now=self._now(), max_bytes=self._max_bytes, method="GET",
        )  # fmt: skip
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, list):
            raise malformed(self.name, "the model list has no data")
        return [
            ModelInfo(m["id"], m.get("created") if isinstance(m.get("created"), int) else None)
            for m in data
            if isinstance(m, dict) and isinstance(m.get("id"), str)
        ]

    async def embed(self, request: EmbeddingRequest, key: ApiKey) -> Embeddings:
        body: dict[str, Any] = {
            "model": request.model,
            "input": list(request.inputs),
            "encoding_format": "float",
        }
        if request.dimensions is not None:
            body["dimensions"] = request.dimensions
        payload = await post_json(
            self._client, self._embeddings_url, body, self._headers(key), provider=self.name,
            key=key, now=self._now(), max_bytes=self._max_bytes,
        )  # fmt: skip
        data = payload.get("data") if isinstance(payload, dict) else None
        count = len(request.inputs)
        if not isinstance(data, list) or len(data) != count:
            raise malformed(self.name, f"expected a list of {count} embeddings")
        by_index: dict[int, Any] = {}
        for item in data:
            index = item.get("index") if isinstance(item, dict) else None
            if not isinstance(index, int) or not 0 <= index < count or index in by_index:
                raise malformed(self.name, f"the embeddings' indexes are not 0..{count - 1}")
            by_index[index] = item.get("embedding")
        usage = payload.get("usage")
        tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
        return Embeddings(
            vectors=vectors_of([by_index[i] for i in range(count)], self.name),
            model=_model_of(payload, request.model),
            provider=self.name,
            input_tokens=token_count(tokens, self.name, "prompt_tokens"),
        )

    def _completion(self, payload: Any, requested_model: str) -> Completion:
        if not isinstance(payload, dict):
            raise malformed(self.name, "the body is not a JSON object")
        choices = payload.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise malformed(self.name, "no choices")
        message = choices[0].get("message")
        content = message.get("content") if isinstance(message, dict) else None
        if content is not None and not isinstance(content, str):
            raise malformed(self.name, "the message content is not text")
        return Completion(
            content=content or "",
            model=_model_of(payload, requested_model),
            provider=self.name,
            finish_reason=finish_reason(choices[0].get("finish_reason")),
            usage=usage_of(payload.get("usage"), self.name),
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
                if event.data.strip() == "[DONE]":
                    progress.done = True
                    break
                text = self._read_chunk(event.event, event.data, progress, key)
                if text:
                    yield Delta(text)
        # The response is closed before the end is reported: a consumer that stops here leaks
        # nothing.
        yield self._end(progress)

    def _read_chunk(self, event: str, data: str, progress: _Progress, key: ApiKey) -> str:
        chunk = json_or_none(data)
        if event == "error" or (
            isinstance(chunk, dict) and ("error" in chunk or chunk.get("object") == "error")
        ):
            raise classify_stream_error(chunk, provider=self.name, key=key, now=self._now())
        if not isinstance(chunk, dict):
            raise malformed(self.name, "a stream event is not a JSON object")
        progress.model = _model_of(chunk, progress.model)
        if chunk.get("usage") is not None:
            progress.usage = usage_of(chunk["usage"], self.name)
        choices = chunk.get("choices") or []
        if not isinstance(choices, list):
            raise malformed(self.name, "a stream event's choices are not a list")
        text = ""
        for choice in choices:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta")
            content = delta.get("content") if isinstance(delta, dict) else None
            if isinstance(content, str):
                text += content
            if choice.get("finish_reason"):
                progress.finish = finish_reason(choice["finish_reason"])
        return text

    def _end(self, progress: _Progress) -> StreamEnd:
        if not progress.done:
            raise UpstreamFault(f"{self.name} stream ended before [DONE] (truncated)")
        if progress.finish is None:
            raise UpstreamFault(f"{self.name} stream ended without a finish_reason (truncated)")
        return StreamEnd(progress.model, progress.finish, progress.usage)
