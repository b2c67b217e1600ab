"""Google Gemini (Generative Language API, v1beta): generateContent and streamGenerateContent.

A prompt Gemini blocks (`promptFeedback.blockReason`, no candidates) is answered, not raised: a
completion with empty content and finish reason CONTENT_FILTER, as OpenAI reports its filter.
It is not a fault of the provider nor of the key, and it is never cached (not STOP).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote

import httpx

from adapters.outbound.providers.errors import (
    MAX_ANSWER_BYTES,
    MAX_TOKEN_COUNT,
    classify_stream_error,
    json_or_none,
    malformed,
    token_count,
    utcnow,
    vectors_of,
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

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com"
MAX_EMBED_BATCH = 100  # texts batchEmbedContents takes in one call

_FINISH = {
    "STOP": FinishReason.STOP,
    "MAX_TOKENS": FinishReason.LENGTH,
    "SAFETY": FinishReason.CONTENT_FILTER,
    "RECITATION": FinishReason.CONTENT_FILTER,
    "BLOCKLIST": FinishReason.CONTENT_FILTER,
    "PROHIBITED_CONTENT": FinishReason.CONTENT_FILTER,
    "SPII": FinishReason.CONTENT_FILTER,
    "IMAGE_SAFETY": FinishReason.CONTENT_FILTER,
}


def finish_reason(value: object) -> FinishReason:
    return _FINISH.get(value, FinishReason.OTHER) if isinstance(value, str) else FinishReason.OTHER


def usage_of(value: object, provider: str = "gemini") -> Usage:
    """Thinking tokens are output tokens too (billed as such; OpenAI counts them in
    `completion_tokens`), so output = candidatesTokenCount + thoughtsTokenCount."""
    if not isinstance(value, dict):
        return Usage()
    output = token_count(value.get("candidatesTokenCount"), provider, "candidatesTokenCount")
    output += token_count(value.get("thoughtsTokenCount"), provider, "thoughtsTokenCount")
    if output > MAX_TOKEN_COUNT:
        raise malformed(provider, f"usage output tokens are out of range ({output})")
    return Usage(token_count(value.get("promptTokenCount"), provider, "promptTokenCount"), output)


@dataclass(slots=True)
class _Progress:
    model: str
    finish: FinishReason | None = None
    usage: Usage = field(default_factory=Usage)


@dataclass(frozen=True, slots=True)
class _Chunk:
    """What one GenerateContentResponse says."""

    text: str
    finish: FinishReason | None
    model: str | None
    usage: Usage | None


class GeminiProvider(Provider):
    """The key travels in the `x-goog-api-key` header, never in the URL (URLs get logged)."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        base_url: str = DEFAULT_BASE_URL,
        stream_idle_timeout: float = 30.0,
        max_response_bytes: int = MAX_ANSWER_BYTES,
        name: str = "gemini",
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        if stream_idle_timeout <= 0:
            raise ValueError("stream_idle_timeout must be positive")
        self.name = name
        self._client = client
        self._base = base_url.rstrip("/") + "/v1beta/models/"
        self._idle = stream_idle_timeout
        self._max_bytes = max_response_bytes
        self._now = now

    def __repr__(self) -> str:
        return f"GeminiProvider(name={self.name!r}, url={self._base!r})"

    def url(self, model: str, *, stream: bool) -> str:
        model = quote(model.removeprefix("models/"), safe="")
        if stream:
            return f"{self._base}{model}:streamGenerateContent?alt=sse"
        return f"{self._base}{model}:generateContent"

    def body(self, request: InferenceRequest) -> dict[str, Any]:
        """System messages, wherever they are, become the system instruction."""
        if request.prefill:
            raise UpstreamRejected(
                f"{self.name} cannot continue an assistant turn (prefill): end messages with a "
                "user message, or use a model of a provider that can (OpenAI, Anthropic)",
                "messages",
            )
        contents: list[dict[str, Any]] = []
        for message in request.messages:
            if message.role is Role.SYSTEM:
                continue
            role = "model" if message.role is Role.ASSISTANT else "user"
            if contents and contents[-1]["role"] == role:
                contents[-1]["parts"].append({"text": message.content})
            else:
                contents.append({"role": role, "parts": [{"text": message.content}]})
        body: dict[str, Any] = {"contents": contents}
        if request.system is not None:
            body["systemInstruction"] = {"parts": [{"text": request.system}]}
        config: dict[str, Any] = {}
        if request.temperature is not None:
            config["temperature"] = request.temperature
        if request.max_tokens is not None:
            config["maxOutputTokens"] = request.max_tokens
        if config:
            body["generationConfig"] = config
        return body

    @staticmethod
    def _headers(key: ApiKey) -> dict[str, str]:
        return {"x-goog-api-key": key.value}

    async def complete(self, request: InferenceRequest, key: ApiKey) -> Completion:
        payload = await post_json(
            self._client, self.url(request.model, stream=False), self.body(request),
            self._headers(key), provider=self.name, key=key, now=self._now(),
            max_bytes=self._max_bytes,
        )  # fmt: skip
        chunk = self._read(payload, key)
        if chunk.finish is not None:
            finish = chunk.finish
        elif self._blocked(payload):
            finish = FinishReason.CONTENT_FILTER
        elif self._has_candidates(payload):
            finish = FinishReason.OTHER
        else:
            raise malformed(self.name, "no candidates and no block reason")
        return Completion(
            content=chunk.text,
            model=chunk.model or request.model,
            provider=self.name,
            finish_reason=finish,
            usage=chunk.usage or Usage(),
        )

    async def stream(
        self, request: InferenceRequest, key: ApiKey
    ) -> AsyncGenerator[StreamEvent, None]:
        progress = _Progress(model=request.model)
        events = post_sse(
            self._client, self.url(request.model, stream=True), self.body(request),
            self._headers(key), provider=self.name, key=key, now=self._now(),
            idle_timeout=self._idle, max_bytes=self._max_bytes,
        )  # fmt: skip
        async with aclosing(events):
            async for event in events:
                payload = json_or_none(event.data)
                if event.event == "error":
                    raise classify_stream_error(
                        payload, provider=self.name, key=key, now=self._now()
                    )
                chunk = self._read(payload, key)
                progress.model = chunk.model or progress.model
                progress.usage = chunk.usage or progress.usage
                if self._blocked(payload):
                    progress.finish = FinishReason.CONTENT_FILTER
                progress.finish = chunk.finish or progress.finish
                if chunk.text:
                    yield Delta(chunk.text)
        if progress.finish is None:
            raise UpstreamFault(f"{self.name} stream ended without a finishReason (truncated)")
        yield StreamEnd(progress.model, progress.finish, progress.usage)

    async def models(self, key: ApiKey) -> list[ModelInfo]:
        """The models that generate content or embed (`models/gemini-2.0-flash` ->
        `gemini-2.0-flash`)."""
        payload = await post_json(
            self._client, self._base.rstrip("/") + "?pageSize=1000", None, self._headers(key),
            provider=self.name, key=key, now=self._now(), max_bytes=self._max_bytes,
            method="GET",
        )  # fmt: skip
        models = payload.get("models") if isinstance(payload, dict) else None
        if not isinstance(models, list):
            raise malformed(self.name, "the model list has no models")
        return [
            ModelInfo(m["name"].removeprefix("models/"))
            for m in models
            if isinstance(m, dict)
            and isinstance(m.get("name"), str)
            and {"generateContent", "embedContent"} & set(m.get("supportedGenerationMethods") or ())
        ]

    async def embed(self, request: EmbeddingRequest, key: ApiKey) -> Embeddings:
        """`batchEmbedContents`, at most MAX_EMBED_BATCH texts a call. Gemini reports no
        token usage for embeddings: 0 input tokens."""
        model = request.model.removeprefix("models/")
        url = self._base + quote(model, safe="") + ":batchEmbedContents"

        def one(text: str) -> dict[str, Any]:
            item: dict[str, Any] = {
                "model": f"models/{model}",
                "content": {"parts": [{"text": text}]},
            }
            if request.dimensions is not None:
                item["outputDimensionality"] = request.dimensions
            return item

        values: list[Any] = []
        for start in range(0, len(request.inputs), MAX_EMBED_BATCH):
            batch = request.inputs[start : start + MAX_EMBED_BATCH]
            payload = await post_json(
                self._client, url, {"requests": [one(text) for text in batch]},
                self._headers(key), provider=self.name, key=key, now=self._now(),
                max_bytes=self._max_bytes,
            )  # fmt: skip
            embeddings = payload.get("embeddings") if isinstance(payload, dict) else None
            if not isinstance(embeddings, list) or len(embeddings) != len(batch):
                raise malformed(self.name, f"expected a list of {len(batch)} embeddings")
            values += [e.get("values") if isinstance(e, dict) else None for e in embeddings]
        return Embeddings(vectors_of(values, self.name), model, self.name)

    def _read(self, payload: Any, key: ApiKey) -> _Chunk:
        if isinstance(payload, dict) and "error" in payload:
            raise classify_stream_error(payload, provider=self.name, key=key, now=self._now())
        if not isinstance(payload, dict):
            raise malformed(self.name, "the answer is not a JSON object")
        candidates = payload.get("candidates")
        if candidates is not None and not isinstance(candidates, list):
            raise malformed(self.name, "candidates is not a list")
        candidate = candidates[0] if candidates else {}
        if not isinstance(candidate, dict):
            raise malformed(self.name, "a candidate is not an object")
        version = payload.get("modelVersion")
        usage = payload.get("usageMetadata")
        raw_finish = candidate.get("finishReason")
        return _Chunk(
            text=self._text(candidate),
            finish=finish_reason(raw_finish) if raw_finish else None,
            model=version if isinstance(version, str) and version else None,
            usage=usage_of(usage, self.name) if isinstance(usage, dict) else None,
        )

    def _text(self, candidate: dict[str, Any]) -> str:
        content = candidate.get("content")
        parts = content.get("parts") if isinstance(content, dict) else None
        if parts is None:
            return ""
        if not isinstance(parts, list):
            raise malformed(self.name, "content.parts is not a list")
        # Thought summaries (`thought: true`) are the model's reasoning, not its answer.
        texts = [
            part.get("text") for part in parts if isinstance(part, dict) and not part.get("thought")
        ]
        return "".join(text for text in texts if isinstance(text, str))

    @staticmethod
    def _blocked(payload: Any) -> bool:
        feedback = payload.get("promptFeedback") if isinstance(payload, dict) else None
        return isinstance(feedback, dict) and bool(feedback.get("blockReason"))

    @staticmethod
    def _has_candidates(payload: Any) -> bool:
        return isinstance(payload, dict) and bool(payload.get("candidates"))
