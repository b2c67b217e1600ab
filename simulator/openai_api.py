"""OpenAI wire shapes: request parsing, response payloads and error bodies (pure)."""

from __future__ import annotations

import base64
import struct
import uuid
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from simulator.content import Answer, count_tokens, mask_key
from simulator.faults import strip_markers
from simulator.wire import (
    ApiError,
    EmbeddingRequest,
    GenerationRequest,
    RateState,
    StreamStyle,
    dump_compact,
    gateway_html,
    go_duration,
    json_response,
    optional_int,
    optional_number,
    retry_after_header,
)

SYSTEM_FINGERPRINT = "fp_simulator"
STREAM_STYLE = StreamStyle(
    content_type="text/event-stream; charset=utf-8", separator=b"\n\n", done_marker=b"[DONE]"
)
DEFAULT_MODELS = ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small", "text-embedding-3-large")

CHAT_PARAMS = frozenset(
    {
        "audio",
        "frequency_penalty",
        "function_call",
        "functions",
        "logit_bias",
        "logprobs",
        "max_completion_tokens",
        "max_tokens",
        "messages",
        "metadata",
        "modalities",
        "model",
        "n",
        "parallel_tool_calls",
        "prediction",
        "presence_penalty",
        "prompt_cache_key",
        "reasoning_effort",
        "response_format",
        "safety_identifier",
        "seed",
        "service_tier",
        "stop",
        "store",
        "stream",
        "stream_options",
        "temperature",
        "tool_choice",
        "tools",
        "top_logprobs",
        "top_p",
        "user",
        "verbosity",
        "web_search_options",
    }
)
EMBEDDING_PARAMS = frozenset({"input", "model", "dimensions", "encoding_format", "user"})
ROLES = ("system", "assistant", "user", "function", "tool", "developer")

_ERROR_TEXT: dict[int, tuple[str, str, str | None]] = {
    400: ("Invalid request: the simulator rejected it.", "invalid_request_error", None),
    403: (
        "Country, region, or territory not supported",
        "request_forbidden",
        "unsupported_country_region_territory",
    ),
    404: ("The requested resource does not exist.", "invalid_request_error", None),
    408: ("Request timed out.", "invalid_request_error", None),
    409: ("The request conflicts with another request.", "invalid_request_error", None),
    500: (
        "The server had an error while processing your request. Sorry about that!",
        "server_error",
        None,
    ),
    503: ("The server is overloaded or not ready yet.", "server_error", None),
}


def _error_body(
    message: str, type_: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class OpenAIDialect:
    """Authentication and error shapes of ``api.openai.com``."""

    provider = "openai"

    def extract_key(self, request: web.Request) -> str | None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None
        return token

    def missing_key(self) -> web.Response:
        message = (
            "You didn't provide an API key. You need to provide your API key in an "
            "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
        )
        return json_response(_error_body(message, "invalid_request_error"), 401)

    def invalid_key(self, key: str, *, real: bool) -> web.Response:
        message = (
            f"Incorrect API key provided: {mask_key(key)}. You can find your API key at "
            "https://platform.openai.com/account/api-keys."
        )
        body = _error_body(message, "invalid_request_error", code="invalid_api_key")
        return json_response(body, 401)

    def rate_limited(
        self, retry_after_s: float, *, model: str | None, limit: int | None
    ) -> web.Response:
        rpm = limit or 60
        message = (
            f"Rate limit reached for {model or 'requests'} in organization org-simulator on "
            f"requests per min (RPM): Limit {rpm}, Used {rpm}, Requested 1. Please try again "
            f"in {go_duration(retry_after_s)}. Visit https://platform.openai.com/account/"
            "rate-limits to learn more."
        )
        headers = {
            "retry-after": retry_after_header(retry_after_s),
            "retry-after-ms": str(round(retry_after_s * 1000)),
            "x-ratelimit-limit-requests": str(rpm),
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": go_duration(retry_after_s),
            "x-ratelimit-limit-tokens": "200000",
            "x-ratelimit-remaining-tokens": "200000",
            "x-ratelimit-reset-tokens": "0ms",
            "x-request-id": _request_id(),
        }
        body = _error_body(message, "requests", code="rate_limit_exceeded")
        return json_response(body, 429, headers=headers)

    def quota_exceeded(self, model: str | None) -> web.Response:
        message = (
            "You exceeded your current quota, please check your plan and billing details. "
            "For more information on this error, read the docs: "
            "https://platform.openai.com/docs/guides/error-codes/api-errors."
        )
        body = _error_body(message, "insufficient_quota", code="insufficient_quota")
        return json_response(body, 429, headers={"x-request-id": _request_id()})

    def error(self, status: int) -> web.Response:
        if status in (502, 504):
            return gateway_html(status)
        default = (
            ("The server had an error processing your request.", "server_error", None)
            if status >= 500
            else ("The request was rejected.", "invalid_request_error", None)
        )
        message, type_, code = _ERROR_TEXT.get(status, default)
        body = _error_body(message, type_, code=code)
        return json_response(body, status, headers={"x-request-id": _request_id()})

    def api_error(self, err: ApiError) -> web.Response:
        type_ = "server_error" if err.status >= 500 else "invalid_request_error"
        body = _error_body(err.message, type_, param=err.param, code=err.code)
        return json_response(body, err.status, headers={"x-request-id": _request_id()})

    def invalid_json(self) -> ApiError:
        return ApiError(
            400,
            "We could not parse the JSON body of your request. (HINT: This likely means you "
            "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, "
            "but what was sent was not valid JSON.)",
        )

    def model_not_found(self, model: str, action: str) -> ApiError:
        return ApiError(
            404,
            f"The model `{model}` does not exist or you do not have access to it.",
            code="model_not_found",
        )

    def stream_error_payload(self) -> bytes:
        message = "The server had an error while processing your request. Sorry about that!"
        return dump_compact(_error_body(message, "server_error"))

    def success_headers(self, rate: RateState | None) -> dict[str, str]:
        limit, remaining, reset = (
            (rate.limit, rate.remaining, rate.reset_s)
            if rate
            else (
                10000,
                9999,
                0.006,
            )
        )
        return {
            "x-request-id": _request_id(),
            "openai-processing-ms": "1",
            "openai-version": "2020-10-01",
            "x-ratelimit-limit-requests": str(limit),
            "x-ratelimit-remaining-requests": str(remaining),
            "x-ratelimit-reset-requests": go_duration(reset),
            "x-ratelimit-limit-tokens": "200000",
            "x-ratelimit-remaining-tokens": "199000",
            "x-ratelimit-reset-tokens": "300ms",
        }


def _request_id() -> str:
    return f"req_{uuid.uuid4().hex}"


def new_completion_id() -> str:
    return f"chatcmpl-sim{uuid.uuid4().hex[:24]}"


def _content_text(content: Any, index: int, role: str) -> str:
    if isinstance(content, str):
        return content
    if content is None and role in ("assistant", "function"):
        return ""
    if isinstance(content, list):
        texts: list[str] = []
        for part in content:
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise ApiError(
                    400,
                    f"Invalid type for 'messages[{index}].content': expected an array of "
                    "content parts.",
                    param=f"messages[{index}].content",
                )
            if part["type"] == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
        return "\n".join(texts)
    raise ApiError(
        400,
        f"Invalid type for 'messages[{index}].content': expected one of a string or an array "
        "of objects.",
        param=f"messages[{index}].content",
        code="invalid_type",
    )


def _require_model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "you must provide a model parameter", param="model")
    return model


def _require_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ApiError(400, "Invalid request body: expected a JSON object.")
    return body


def _reject_unknown(body: dict[str, Any], allowed: frozenset[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ApiError(400, f"Unrecognized request argument supplied: {unknown[0]}")


def parse_chat(raw: Any) -> GenerationRequest:
    """Validate a ``POST /v1/chat/completions`` body the way the real API does (subset)."""
    body = _require_object(raw)
    _reject_unknown(body, CHAT_PARAMS)
    model = _require_model(body)
    messages = body.get("messages")
    if messages is None:
        raise ApiError(400, "Missing required parameter: 'messages'.", param="messages")
    if not isinstance(messages, list):
        raise ApiError(400, "Invalid type for 'messages': expected an array.", param="messages")
    if not messages:
        raise ApiError(400, "[] is too short - 'messages'", param="messages")
    turns: list[tuple[str, str]] = []
    raw_texts: list[str] = []
    last_user = ""
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ApiError(
                400,
                f"Invalid type for 'messages[{index}]': expected an object.",
                param=f"messages[{index}]",
            )
        role = message.get("role")
        if role not in ROLES:
            raise ApiError(
                400,
                f"Invalid value: '{role}'. Supported values are: 'system', 'assistant', "
                "'user', 'function', 'tool', and 'developer'.",
                param=f"messages[{index}].role",
                code="invalid_value",
            )
        text = _content_text(message.get("content"), index, str(role))
        raw_texts.append(text)
        clean = strip_markers(text)
        turns.append(("system" if role in ("system", "developer") else str(role), clean))
        if role == "user":
            last_user = clean
    optional_number(body, "temperature", minimum=0, maximum=2)
    optional_number(body, "top_p", minimum=0, maximum=1)
    n = optional_int(body, "n", minimum=1)
    if n is not None and n != 1:
        raise ApiError(400, "The simulator only supports n=1.", param="n")
    max_completion = optional_int(body, "max_completion_tokens", minimum=1)
    max_tokens = optional_int(body, "max_tokens", minimum=1)
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise ApiError(400, "Invalid type for 'stream': expected a boolean.", param="stream")
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        if not stream:
            raise ApiError(
                400,
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                param="stream_options",
            )
        if not isinstance(options, dict):
            raise ApiError(
                400,
                "Invalid type for 'stream_options': expected an object.",
                param="stream_options",
            )
        include_usage = options.get("include_usage") is True
    return GenerationRequest(
        model=model,
        turns=tuple(turns),
        last_user_text=last_user,
        max_tokens=max_completion if max_completion is not None else max_tokens,
        stream=bool(stream),
        include_usage=include_usage,
        marker_texts=tuple(raw_texts),
    )


def _usage(answer: Answer) -> dict[str, Any]:
    return {
        "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": answer.completion_tokens,
        "total_tokens": answer.total_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def finish_reason(answer: Answer) -> str:
    return "length" if answer.truncated else "stop"


def chat_completion(
    *, completion_id: str, created: int, model: str, answer: Answer
) -> dict[str, Any]:
    """A ``chat.completion`` object."""
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": answer.text,
                    "refusal": None,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": finish_reason(answer),
            }
        ],
        "usage": _usage(answer),
        "service_tier": "default",
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }


def chat_stream_events(
    *,
    completion_id: str,
    created: int,
    model: str,
    answer: Answer,
    words_per_chunk: int,
    include_usage: bool,
) -> list[tuple[bytes, bool]]:
    """``chat.completion.chunk`` payloads, each flagged whether it carries content.

    Order as the real API: a role chunk with empty content, content chunks, a chunk with
    an empty delta and the finish reason, then (``include_usage``) a chunk with
    ``choices: []`` and the usage; every other chunk has ``usage: null`` in that mode.
    """
    base: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "service_tier": "default",
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }

    def chunk(delta: dict[str, Any], finish: str | None) -> bytes:
        payload = {
            **base,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if include_usage:
            payload["usage"] = None
        return dump_compact(payload)

    events = [(chunk({"role": "assistant", "content": "", "refusal": None}, None), False)]
    events.extend(
        (chunk({"content": piece}, None), True) for piece in answer.chunks(words_per_chunk)
    )
    events.append((chunk({}, finish_reason(answer)), False))
    if include_usage:
        events.append((dump_compact({**base, "choices": [], "usage": _usage(answer)}), False))
    return events


def parse_embeddings(raw: Any) -> EmbeddingRequest:
    """Validate a ``POST /v1/embeddings`` body."""
    body = _require_object(raw)
    _reject_unknown(body, EMBEDDING_PARAMS)
    model = _require_model(body)
    value = body.get("input")
    invalid = ApiError(
        400,
        "'$.input' is invalid. Please check the API reference: "
        "https://platform.openai.com/docs/api-reference.",
        param="input",
    )
    texts: list[str]
    if isinstance(value, str):
        texts = [value]
    elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        texts = list(value)
    elif isinstance(value, list) and value and all(_is_int(v) for v in value):
        texts = [" ".join(str(v) for v in value)]
    elif (
        isinstance(value, list)
        and value
        and all(isinstance(v, list) and v and all(_is_int(t) for t in v) for v in value)
    ):
        texts = [" ".join(str(t) for t in v) for v in value]
    else:
        raise invalid
    if any(text == "" for text in texts):
        raise invalid
    dimensions = optional_int(body, "dimensions", minimum=1)
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise ApiError(
            400,
            f"Invalid value: '{encoding}'. Supported values are: 'float' and 'base64'.",
            param="encoding_format",
        )
    return EmbeddingRequest(
        model=model,
        texts=tuple(strip_markers(t) for t in texts),
        dimensions=tuple(dimensions for _ in texts),
        encoding=str(encoding),
        marker_texts=tuple(texts),
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def embeddings_response(
    *, model: str, vectors: Sequence[list[float]], texts: Sequence[str], encoding: str
) -> dict[str, Any]:
    """A ``list`` of ``embedding`` objects with usage (float or base64 float32 LE)."""
    data = []
    for index, vector in enumerate(vectors):
        embedding: list[float] | str = vector
        if encoding == "base64":
            embedding = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    tokens = sum(count_tokens(t) for t in texts)
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def models_response(models: Sequence[str]) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {"id": m, "object": "model", "created": 1700000000, "owned_by": "system"}
            for m in models
        ],
    }
