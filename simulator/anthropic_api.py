"""Anthropic Messages API wire shapes: request parsing, response payloads, stream events and
error bodies (pure)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from simulator.content import Answer
from simulator.faults import strip_markers
from simulator.wire import (
    ApiError,
    GenerationRequest,
    RateState,
    StreamStyle,
    dump_compact,
    gateway_html,
    json_response,
    optional_int,
    optional_number,
    retry_after_header,
)

DEFAULT_MODELS = ("claude-haiku-4-5", "claude-opus-4-1", "claude-sonnet-4-5")
VERSION = "2023-06-01"
STREAM_STYLE = StreamStyle(content_type="text/event-stream; charset=utf-8", named_events=True)
MESSAGE_PARAMS = frozenset(
    {
        "max_tokens",
        "messages",
        "metadata",
        "model",
        "stop_sequences",
        "stream",
        "system",
        "temperature",
        "thinking",
        "tool_choice",
        "tools",
        "top_k",
        "top_p",
    }
)

# status -> the error `type` Anthropic sends with it
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
_ERROR_TEXT = {
    500: "Internal server error",
    529: "Overloaded",
}


def error_body(status: int, message: str) -> dict[str, Any]:
    kind = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


def _request_id() -> str:
    return f"req_sim{uuid.uuid4().hex[:24]}"


def _rfc3339(seconds_from_now: float) -> str:
    when = datetime.now(UTC) + timedelta(seconds=seconds_from_now)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


class AnthropicDialect:
    """Authentication (`x-api-key`), rate-limit headers and error shapes of api.anthropic.com."""

    provider = "anthropic"

    def extract_key(self, request: web.Request) -> str | None:
        return request.headers.get("x-api-key", "").strip() or None

    def missing_key(self) -> web.Response:
        return json_response(error_body(401, "x-api-key header is required"), 401)

    def invalid_key(self, key: str, *, real: bool) -> web.Response:
        return json_response(error_body(401, "invalid x-api-key"), 401)

    def rate_limited(
        self, retry_after_s: float, *, model: str | None, limit: int | None
    ) -> web.Response:
        rpm = limit or 50
        message = (
            f"This request would exceed the rate limit for your organization of {rpm} requests "
            "per minute. For details, refer to: https://docs.claude.com/en/api/rate-limits."
        )
        headers = {
            "retry-after": retry_after_header(retry_after_s),
            "anthropic-ratelimit-requests-limit": str(rpm),
            "anthropic-ratelimit-requests-remaining": "0",
            "anthropic-ratelimit-requests-reset": _rfc3339(retry_after_s),
            "request-id": _request_id(),
        }
        return json_response(error_body(429, message), 429, headers=headers)

    def quota_exceeded(self, model: str | None) -> web.Response:
        message = (
            "Your credit balance is too low to access the Anthropic API. Please go to Plans & "
            "Billing to upgrade or purchase credits."
        )
        return json_response(error_body(400, message), 400)

    def error(self, status: int) -> web.Response:
        if status in (502, 504):
            return gateway_html(status)
        message = _ERROR_TEXT.get(status, "The request was rejected.")
        headers = {"request-id": _request_id()}
        return json_response(error_body(status, message), status, headers=headers)

    def api_error(self, err: ApiError) -> web.Response:
        return json_response(error_body(err.status, err.message), err.status)

    def invalid_json(self) -> ApiError:
        return ApiError(400, "There was an issue with the request body: invalid JSON")

    def model_not_found(self, model: str, action: str) -> ApiError:
        return ApiError(404, f"model: {model}")

    def stream_error_payload(self) -> bytes:
        return dump_compact(error_body(529, "Overloaded"))

    def success_headers(self, rate: RateState | None) -> dict[str, str]:
        limit, remaining, reset = (
            (rate.limit, rate.remaining, rate.reset_s) if rate else (50, 49, 1.0)
        )
        return {
            "request-id": _request_id(),
            "anthropic-ratelimit-requests-limit": str(limit),
            "anthropic-ratelimit-requests-remaining": str(remaining),
            "anthropic-ratelimit-requests-reset": _rfc3339(reset),
        }


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for i, block in enumerate(content):
            if not isinstance(block, dict) or block.get("type") != "text":
                raise ApiError(400, f"{where}.{i}.type: the simulator supports text blocks only")
            text = block.get("text")
            if not isinstance(text, str):
                raise ApiError(400, f"{where}.{i}.text: Field required")
            texts.append(text)
        return "".join(texts)
    raise ApiError(400, f"{where}: Input should be a valid string or a list of content blocks")


def parse_messages(raw: Any) -> GenerationRequest:
    """Validate a `POST /v1/messages` body the way the real API does (subset)."""
    if not isinstance(raw, dict):
        raise ApiError(400, "There was an issue with the request body: expected an object")
    unknown = sorted(set(raw) - MESSAGE_PARAMS)
    if unknown:
        raise ApiError(400, f"{unknown[0]}: Extra inputs are not permitted")
    model = raw.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "model: Field required")
    if raw.get("max_tokens") is None:
        raise ApiError(400, "max_tokens: Field required")
    max_tokens = optional_int(raw, "max_tokens", minimum=1)
    messages = raw.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages: at least one message is required")
    turns: list[tuple[str, str]] = []
    raw_texts: list[str] = []
    system = raw.get("system")
    if system is not None:
        text = _text(system, "system")
        raw_texts.append(text)
        turns.append(("system", strip_markers(text)))
    last_user = ""
    for index, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("user", "assistant"):
            raise ApiError(
                400,
                f"messages.{index}.role: Input should be 'user' or 'assistant'",
            )
        text = _text(message.get("content"), f"messages.{index}.content")
        if role == "assistant" and index == len(messages) - 1 and text != text.rstrip():
            raise ApiError(
                400, "messages: final assistant content cannot end with trailing whitespace"
            )
        raw_texts.append(text)
        clean = strip_markers(text)
        turns.append((role, clean))
        if role == "user":
            last_user = clean
    optional_number(raw, "temperature", minimum=0, maximum=1)
    stream = raw.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise ApiError(400, "stream: Input should be a valid boolean")
    return GenerationRequest(
        model=model,
        turns=tuple(turns),
        last_user_text=last_user,
        max_tokens=max_tokens,
        stream=bool(stream),
        include_usage=True,
        marker_texts=tuple(raw_texts),
    )


def new_message_id() -> str:
    return f"msg_sim{uuid.uuid4().hex[:24]}"


def stop_reason(answer: Answer) -> str:
    return "max_tokens" if answer.truncated else "end_turn"


def _usage(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


def message(*, message_id: str, model: str, answer: Answer) -> dict[str, Any]:
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": answer.text}],
        "stop_reason": stop_reason(answer),
        "stop_sequence": None,
        "usage": _usage(answer.prompt_tokens, answer.completion_tokens),
    }


def stream_events(
    *, message_id: str, model: str, answer: Answer, words_per_chunk: int
) -> list[tuple[bytes, bool]]:
    """The events of a streamed message, each flagged whether it carries content, in the
    real API's order: message_start, content_block_start, ping, content_block_delta...,
    content_block_stop, message_delta (stop reason, output tokens), message_stop."""
    start: dict[str, Any] = {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": _usage(answer.prompt_tokens, 1),
    }
    events = [
        (dump_compact({"type": "message_start", "message": start}), False),
        (
            dump_compact(
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                }
            ),
            False,
        ),
        (dump_compact({"type": "ping"}), False),
    ]
    events += [
        (
            dump_compact(
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": piece},
                }
            ),
            True,
        )
        for piece in answer.chunks(words_per_chunk)
    ]
    events += [
        (dump_compact({"type": "content_block_stop", "index": 0}), False),
        (
            dump_compact(
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop_reason(answer), "stop_sequence": None},
                    "usage": {"output_tokens": answer.completion_tokens},
                }
            ),
            False,
        ),
        (dump_compact({"type": "message_stop"}), False),
    ]
    return events


def models_response(models: Sequence[str]) -> dict[str, Any]:
    data = [
        {
            "type": "model",
            "id": m,
            "display_name": m.replace("-", " ").title(),
            "created_at": "2025-09-29T00:00:00Z",
        }
        for m in models
    ]
    return {
        "data": data,
        "has_more": False,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }
