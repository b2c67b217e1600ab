"""Gemini (generativelanguage.googleapis.com) wire shapes: parsing, payloads, errors (pure)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from aiohttp import web

from simulator.content import Answer
from simulator.faults import strip_markers
from simulator.wire import (
    ApiError,
    EmbeddingRequest,
    GenerationRequest,
    RateState,
    StreamStyle,
    dump_compact,
    gateway_html,
    json_response,
    optional_number,
    proto_duration,
)

DEFAULT_MODELS = ("gemini-2.0-flash", "gemini-2.5-flash", "text-embedding-004")

_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_MESSAGES = {
    400: "Request contains an invalid argument.",
    401: (
        "Request had invalid authentication credentials. Expected OAuth 2 access token, "
        "login cookie or other valid authentication credential."
    ),
    403: "The caller does not have permission",
    404: "Requested entity was not found.",
    500: (
        "An internal error has occurred. Please retry or report in "
        "https://developers.generativeai.google/guide/troubleshooting"
    ),
    503: "The model is overloaded. Please try again later.",
    504: "Deadline expired before operation could complete.",
}
_RATE_LIMIT_DOCS = "https://ai.google.dev/gemini-api/docs/rate-limits"

GENERATE_FIELDS = frozenset(
    {
        "contents",
        "model",
        "systemInstruction",
        "system_instruction",
        "generationConfig",
        "generation_config",
        "safetySettings",
        "safety_settings",
        "tools",
        "toolConfig",
        "tool_config",
        "cachedContent",
        "cached_content",
        "labels",
    }
)
EMBED_FIELDS = frozenset(
    {
        "model",
        "content",
        "taskType",
        "task_type",
        "title",
        "outputDimensionality",
        "output_dimensionality",
    }
)


def status_name(status: int) -> str:
    return _STATUS_NAMES.get(status, "INTERNAL" if status >= 500 else "FAILED_PRECONDITION")


def error_body(
    status: int, message: str, details: Sequence[Mapping[str, Any]] | None = None
) -> dict[str, Any]:
    error: dict[str, Any] = {"code": status, "message": message, "status": status_name(status)}
    if details:
        error["details"] = list(details)
    return {"error": error}


def _api_key_invalid_details() -> list[dict[str, Any]]:
    message = "API key not valid. Please pass a valid API key."
    return [
        {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "API_KEY_INVALID",
            "domain": "googleapis.com",
            "metadata": {"service": "generativelanguage.googleapis.com"},
        },
        {
            "@type": "type.googleapis.com/google.rpc.LocalizedMessage",
            "locale": "en-US",
            "message": message,
        },
    ]


class GeminiDialect:
    """Authentication and error shapes of the Gemini Developer API."""

    provider = "gemini"

    def __init__(self, *, invalid_key_status: int = 401, crlf: bool = True) -> None:
        self._invalid_key_status = invalid_key_status
        self.sse_style = StreamStyle(
            content_type="text/event-stream", separator=b"\r\n\r\n" if crlf else b"\n\n"
        )
        self.array_style = StreamStyle(content_type="application/json", json_array=True)

    def extract_key(self, request: web.Request) -> str | None:
        key = request.headers.get("x-goog-api-key", "").strip()
        if not key:
            key = request.query.get("key", "").strip()
        return key or None

    def missing_key(self) -> web.Response:
        message = (
            "Method doesn't allow unregistered callers (callers without established identity)."
            " Please use API Key or other form of API consumer identity to call this API."
        )
        return json_response(error_body(403, message), 403)

    def invalid_key(self, key: str, *, real: bool) -> web.Response:
        status = 400 if real else self._invalid_key_status
        message = "API key not valid. Please pass a valid API key."
        return json_response(error_body(status, message, _api_key_invalid_details()), status)

    def rate_limited(
        self, retry_after_s: float, *, model: str | None, limit: int | None
    ) -> web.Response:
        delay = proto_duration(retry_after_s)
        message = (
            "You exceeded your current quota, please check your plan and billing details. "
            f"For more information on this error, head to: {_RATE_LIMIT_DOCS}. "
            f"Please retry in {delay}."
        )
        details: list[dict[str, Any]] = [
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [
                    {
                        "quotaMetric": (
                            "generativelanguage.googleapis.com/generate_content_free_tier_requests"
                        ),
                        "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                        "quotaDimensions": {
                            "location": "global",
                            "model": model or "gemini-2.0-flash",
                        },
                        "quotaValue": str(limit or 15),
                    }
                ],
            },
            {
                "@type": "type.googleapis.com/google.rpc.Help",
                "links": [
                    {"description": "Learn more about Gemini API quotas", "url": _RATE_LIMIT_DOCS}
                ],
            },
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay},
        ]
        return json_response(error_body(429, message, details), 429)

    def quota_exceeded(self, model: str | None) -> web.Response:
        message = (
            "You exceeded your current quota, please check your plan and billing details. "
            f"For more information on this error, head to: {_RATE_LIMIT_DOCS}."
        )
        details = [
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [
                    {
                        "quotaMetric": (
                            "generativelanguage.googleapis.com/generate_content_free_tier_requests"
                        ),
                        "quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier",
                        "quotaDimensions": {
                            "location": "global",
                            "model": model or "gemini-2.0-flash",
                        },
                        "quotaValue": "200",
                    }
                ],
            }
        ]
        return json_response(error_body(429, message, details), 429)

    def error(self, status: int) -> web.Response:
        if status == 502:
            return gateway_html(status)
        if status == 401:
            return json_response(error_body(401, _MESSAGES[401]), 401)
        message = _MESSAGES.get(status, "The service rejected the request.")
        return json_response(error_body(status, message), status)

    def api_error(self, err: ApiError) -> web.Response:
        return json_response(error_body(err.status, err.message), err.status)

    def invalid_json(self) -> ApiError:
        return ApiError(400, "Invalid JSON payload received. Unexpected token.")

    def model_not_found(self, model: str, action: str) -> ApiError:
        return ApiError(
            404,
            f"models/{model} is not found for API version v1beta, or is not supported for "
            f"{action}. Call ListModels to see the list of available models and their "
            "supported methods.",
        )

    def stream_error_payload(self) -> bytes:
        return dump_compact(error_body(500, _MESSAGES[500]))

    def success_headers(self, rate: RateState | None) -> dict[str, str]:
        return {"x-gemini-service-tier": "standard"}


def new_response_id() -> str:
    return uuid.uuid4().hex[:22]


def _pick(body: Mapping[str, Any], camel: str, snake: str) -> Any:
    return body[camel] if camel in body else body.get(snake)


def _require_object(raw: Any, what: str = "payload") -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ApiError(400, f"Invalid JSON payload received. Expected an object for {what}.")
    return raw


def _reject_unknown(body: Mapping[str, Any], allowed: frozenset[str], prefix: str = "") -> None:
    for name in body:
        if name not in allowed:
            raise ApiError(
                400,
                f'Invalid JSON payload received. Unknown name "{name}"{prefix}: Cannot find field.',
            )


def _content_text(content: Any, where: str) -> str:
    content = _require_object(content, where)
    parts = content.get("parts")
    if not isinstance(parts, list) or not parts:
        raise ApiError(
            400, f"* GenerateContentRequest.{where}.parts: contents.parts must not be empty.\n"
        )
    texts: list[str] = []
    for part in parts:
        part = _require_object(part, f"{where}.parts")
        text = part.get("text")
        if text is not None and not isinstance(text, str):
            raise ApiError(400, f"Invalid value at '{where}.parts.text' (TYPE_STRING).")
        if text:
            texts.append(text)
    return "\n".join(texts)


def parse_generate(model: str, raw: Any, *, stream: bool) -> GenerationRequest:
    """Validate a generateContent / streamGenerateContent body (camelCase or snake_case)."""
    body = _require_object(raw)
    _reject_unknown(body, GENERATE_FIELDS)
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise ApiError(400, "* GenerateContentRequest.contents: contents is not specified\n")
    turns: list[tuple[str, str]] = []
    raw_texts: list[str] = []
    system = _pick(body, "systemInstruction", "system_instruction")
    if system is not None:
        text = _content_text(system, "system_instruction")
        raw_texts.append(text)
        turns.append(("system", strip_markers(text)))
    last_user = ""
    for index, content in enumerate(contents):
        content = _require_object(content, f"contents[{index}]")
        role = content.get("role", "user")
        if role not in ("user", "model", "function"):
            raise ApiError(400, "Please use a valid role: user, model.")
        text = _content_text(content, f"contents[{index}]")
        raw_texts.append(text)
        clean = strip_markers(text)
        turns.append(("assistant" if role == "model" else str(role), clean))
        if role == "user":
            last_user = clean
    config = _pick(body, "generationConfig", "generation_config")
    max_tokens: int | None = None
    if config is not None:
        config = _require_object(config, "generation_config")
        optional_number(config, "temperature", minimum=0, maximum=2)
        value = _pick(config, "maxOutputTokens", "max_output_tokens")
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ApiError(
                    400,
                    "Invalid value at 'generation_config.max_output_tokens' (TYPE_INT32).",
                )
            if value < 0:
                raise ApiError(400, "max_output_tokens must be positive.")
            max_tokens = value or None
        candidates = _pick(config, "candidateCount", "candidate_count")
        if candidates not in (None, 1):
            raise ApiError(400, "The simulator only supports candidateCount=1.")
    return GenerationRequest(
        model=model,
        turns=tuple(turns),
        last_user_text=last_user,
        max_tokens=max_tokens,
        stream=stream,
        include_usage=True,
        marker_texts=tuple(raw_texts),
    )


def _usage_metadata(answer: Answer, *, final: bool) -> dict[str, Any]:
    usage: dict[str, Any] = {"promptTokenCount": answer.prompt_tokens}
    if final:
        usage["candidatesTokenCount"] = answer.completion_tokens
        usage["totalTokenCount"] = answer.total_tokens
    else:
        usage["totalTokenCount"] = answer.prompt_tokens
    usage["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": answer.prompt_tokens}]
    return usage


def finish_reason(answer: Answer) -> str:
    return "MAX_TOKENS" if answer.truncated else "STOP"


def generate_response(*, model: str, answer: Answer, response_id: str) -> dict[str, Any]:
    """A ``GenerateContentResponse`` with the whole answer."""
    return {
        "candidates": [
            {
                "content": {"parts": [{"text": answer.text}], "role": "model"},
                "finishReason": finish_reason(answer),
                "index": 0,
            }
        ],
        "usageMetadata": _usage_metadata(answer, final=True),
        "modelVersion": model,
        "responseId": response_id,
    }


def stream_events(
    *, model: str, answer: Answer, response_id: str, words_per_chunk: int
) -> list[tuple[bytes, bool]]:
    """One ``GenerateContentResponse`` per chunk; the last has finishReason and full usage."""
    pieces = answer.chunks(words_per_chunk) or [""]
    events: list[tuple[bytes, bool]] = []
    for index, piece in enumerate(pieces):
        last = index == len(pieces) - 1
        candidate: dict[str, Any] = {
            "content": {"parts": [{"text": piece}], "role": "model"},
            "index": 0,
        }
        if last:
            candidate["finishReason"] = finish_reason(answer)
        payload = {
            "candidates": [candidate],
            "usageMetadata": _usage_metadata(answer, final=last),
            "modelVersion": model,
            "responseId": response_id,
        }
        events.append((dump_compact(payload), bool(piece)))
    return events


def _parse_embed_one(model: str, raw: Any, where: str) -> tuple[str, str, int | None]:
    body = _require_object(raw, where)
    _reject_unknown(body, EMBED_FIELDS)
    named = body.get("model")
    if named is not None and named not in (f"models/{model}", model):
        raise ApiError(
            400,
            f"Model name in {where} ({named}) does not match the model in the URL "
            f"(models/{model}).",
        )
    if "content" not in body:
        raise ApiError(400, f"* {where}.content: content is not specified\n")
    text = _content_text(body["content"], f"{where}.content")
    dims = _pick(body, "outputDimensionality", "output_dimensionality")
    if dims is not None and (isinstance(dims, bool) or not isinstance(dims, int) or dims < 1):
        raise ApiError(400, "output_dimensionality must be a positive integer.")
    return text, strip_markers(text), dims


def parse_embed(model: str, raw: Any) -> EmbeddingRequest:
    raw_text, text, dims = _parse_embed_one(model, raw, "EmbedContentRequest")
    return EmbeddingRequest(
        model=model, texts=(text,), dimensions=(dims,), encoding="float", marker_texts=(raw_text,)
    )


def parse_batch_embed(model: str, raw: Any) -> EmbeddingRequest:
    body = _require_object(raw)
    _reject_unknown(body, frozenset({"requests"}))
    requests = body.get("requests")
    if not isinstance(requests, list) or not requests:
        raise ApiError(400, "* BatchEmbedContentsRequest.requests: requests is not specified\n")
    parsed = [_parse_embed_one(model, r, f"requests[{i}]") for i, r in enumerate(requests)]
    return EmbeddingRequest(
        model=model,
        texts=tuple(p[1] for p in parsed),
        dimensions=tuple(p[2] for p in parsed),
        encoding="float",
        marker_texts=tuple(p[0] for p in parsed),
    )


def embed_response(vector: list[float]) -> dict[str, Any]:
    return {"embedding": {"values": vector}}


def batch_embed_response(vectors: Sequence[list[float]]) -> dict[str, Any]:
    return {"embeddings": [{"values": v} for v in vectors]}


def models_response(models: Sequence[str]) -> dict[str, Any]:
    return {
        "models": [
            {
                "name": f"models/{m}",
                "displayName": m,
                "supportedGenerationMethods": (
                    ["embedContent", "batchEmbedContents"]
                    if "embedding" in m
                    else ["generateContent", "streamGenerateContent", "countTokens"]
                ),
            }
            for m in models
        ]
    }
