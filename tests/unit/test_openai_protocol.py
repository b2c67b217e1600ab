"""OpenAI's request shape -> the domain request, and one failure classification for both
protocols."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest

from adapters.inbound.failures import Kind, classify
from adapters.inbound.grpc.mapping import status_of
from adapters.inbound.http import app, protocol
from domain.errors import (
    CircuitOpen,
    DeadlineExceeded,
    InvalidRequest,
    NoUsableKey,
    ProxyError,
    UnknownModel,
)
from domain.model import CacheControl, RequestLimits, Role


def domain(**body: Any) -> Any:
    request = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi."}], **body}
    parsed = protocol.ChatCompletionRequest.model_validate(request)
    return parsed.to_domain(RequestLimits(), "tenant-a", CacheControl(skip_store=True))


def test_roles_parts_and_limits_map_to_the_same_domain_request() -> None:
    parts = [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}]
    system = {"role": "developer", "content": "Be brief."}
    request = domain(
        messages=[system, {"role": "user", "content": parts}],
        temperature=0,
        max_tokens=10,
        max_completion_tokens=20,
    )  # fmt: skip
    assert [(m.role, m.content) for m in request.messages] == [
        (Role.SYSTEM, "Be brief."),
        (Role.USER, "Hello"),
    ]
    assert request.temperature == 0  # zero, not "unset"
    assert request.max_tokens == 20  # max_completion_tokens wins: it is OpenAI's newer name
    assert request.tenant == "tenant-a"
    assert request.cache == CacheControl(skip_store=True)


@pytest.mark.parametrize(
    "neutral",
    [{"tools": []}, {"tool_choice": "none"}, {"response_format": {"type": "text"}}, {"n": 1},
     {"logprobs": False}, {"stop": None}, {"top_p": 0.3, "seed": 7, "user": "u"}],
)  # fmt: skip
def test_neutral_values_and_unknown_fields_are_accepted(neutral: dict[str, Any]) -> None:
    assert domain(**neutral).model == "gpt-4o"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"stop": ["\n"]}, "stop"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"n": 3}, "n"),
        ({"max_tokens": -1}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),  # as OpenAI: below the minimum, not "no limit"
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
        ({"max_completion_tokens": 0, "max_tokens": 5}, "max_completion_tokens"),
        ({"max_completion_tokens": 10**9}, "max_completion_tokens"),
        ({"temperature": 3}, "temperature"),
        ({"messages": [{"role": "user", "content": " "}]}, "messages[0].content"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
        ({"model": ""}, "model"),
    ],
)
def test_what_would_change_the_answer_is_refused_naming_it(
    body: dict[str, Any], param: str
) -> None:
    with pytest.raises(InvalidRequest) as error:
        domain(**body)
    assert error.value.param == param
    assert param in str(error.value)


def test_the_domain_checks_are_the_same_as_grpcs() -> None:
    with pytest.raises(InvalidRequest, match="MAX_MODEL_NAME_LENGTH"):
        domain(model="m" * 200)
    with pytest.raises(InvalidRequest, match="at least one user message"):
        domain(messages=[{"role": "system", "content": "Hi."}])


def test_a_prefill_and_a_system_message_after_the_user_are_passed_on() -> None:
    user, prefill = {"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hel"}
    later = {"role": "system", "content": "Be brief."}
    request = domain(messages=[user, prefill, later])
    assert [m.role for m in request.messages] == [Role.USER, Role.ASSISTANT, Role.SYSTEM]
    assert request.prefill


@pytest.mark.parametrize("stream", [None, False])
def test_stream_null_is_not_streaming(stream: object) -> None:
    parsed = protocol.ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": stream}
    )
    assert not parsed.stream


def test_a_wrong_type_names_the_parameter_as_openai_does() -> None:
    with pytest.raises(InvalidRequest) as caught:
        protocol.parse(b'{"model": "m", "messages": [{"role": "user", "content": 5}]}')
    assert caught.value.param == "messages[0].content"
    with pytest.raises(InvalidRequest) as caught:
        protocol.parse(b'{"model": "m", "messages": [], "stream": 5}')
    assert caught.value.param == "stream"


def test_a_body_that_is_not_json_or_lacks_a_field_says_so() -> None:
    with pytest.raises(InvalidRequest, match="not valid JSON"):
        protocol.parse(b"{")
    with pytest.raises(InvalidRequest) as missing:
        protocol.parse(b'{"messages": []}')
    assert missing.value.param == "model"


@pytest.mark.parametrize(
    ("error", "kind", "http", "retry"),
    [
        (InvalidRequest("bad"), Kind.INVALID_ARGUMENT, 400, None),
        (UnknownModel("x", "no provider", ()), Kind.NOT_FOUND, 404, None),
        (NoUsableKey("openai", 2.5), Kind.RESOURCE_EXHAUSTED, 429, "3"),
        (NoUsableKey("openai", None), Kind.UNAVAILABLE, 503, None),
        (CircuitOpen("gemini", 4.0), Kind.UNAVAILABLE, 503, "4"),
        (DeadlineExceeded("late"), Kind.DEADLINE_EXCEEDED, 504, None),
    ],
)
def test_one_classification_gives_both_statuses(
    error: ProxyError, kind: Kind, http: int, retry: str | None
) -> None:
    failure = classify(error)
    assert failure.kind is kind
    assert status_of(error).code is grpc.StatusCode[kind.name]
    response = app.error_response(failure)
    assert response.status == http
    assert response.headers.get("Retry-After") == retry


def test_every_kind_has_a_grpc_code_and_an_http_status() -> None:
    for kind in Kind:
        assert grpc.StatusCode[kind.name].name.lower() == kind.value
    assert set(app._HTTP) == set(Kind)


def test_messages_and_content_parts_are_counted_before_any_item_is_validated() -> None:
    limits = RequestLimits(max_messages=3)
    invalid_items = b'{"model": "gpt-4o", "messages": [1, 2, 3, 4]}'
    parts = [{"type": "text", "text": "a"}] * 2
    two_messages_four_parts = json.dumps(
        {"model": "gpt-4o", "messages": [{"role": "user", "content": parts}] * 2}
    ).encode()
    with pytest.raises(InvalidRequest, match=r"4 messages; the limit is 3 \(MAX_MESSAGES\)"):
        protocol.parse(invalid_items, limits)  # not "messages.0: not a valid dictionary"
    with pytest.raises(InvalidRequest, match="4 content parts"):
        protocol.parse(two_messages_four_parts, limits)
    assert len(protocol.parse(two_messages_four_parts, RequestLimits(max_messages=4)).messages) == 2


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity"])
def test_non_json_numbers_are_invalid_json(constant: bytes) -> None:
    body = b'{"model": "gpt-4o", "messages": [], "temperature": ' + constant + b"}"
    with pytest.raises(InvalidRequest, match="not valid JSON"):
        protocol.parse(body)
