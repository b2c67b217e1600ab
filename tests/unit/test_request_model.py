"""InferenceRequest validation: every rejection says what to fix."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.errors import InvalidRequest
from domain.model import MAX_INPUT_CHARS, MAX_OUTPUT_TOKENS, InferenceRequest, Message, Role

USER = Message(Role.USER, "hello")


def request(
    model: str = "gpt-4o-mini",
    messages: tuple[Message, ...] = (USER,),
    temperature: float | None = None,
    max_tokens: int | None = None,
) -> InferenceRequest:
    return InferenceRequest(model, messages, temperature=temperature, max_tokens=max_tokens)


def test_a_minimal_request_is_valid() -> None:
    req = request()

    assert req.model == "gpt-4o-mini"
    assert req.temperature is None
    assert req.max_tokens is None
    assert not req.cache.skip_lookup
    assert not req.cache.skip_store


@pytest.mark.parametrize("model", ["", " ", "\t\n"])
def test_an_empty_model_is_rejected(model: str) -> None:
    with pytest.raises(InvalidRequest, match="model is required"):
        request(model=model)


def test_no_messages_is_rejected() -> None:
    with pytest.raises(InvalidRequest, match="give a prompt or at least one message"):
        request(messages=())


@pytest.mark.parametrize("content", ["", "   ", "\n\t"])
def test_an_empty_message_is_rejected_by_position(content: str) -> None:
    messages = (Message(Role.SYSTEM, "be brief"), Message(Role.USER, content))

    with pytest.raises(InvalidRequest, match=r"messages\[1\]\.content is empty"):
        request(messages=messages)


@pytest.mark.parametrize("role", [Role.SYSTEM, Role.ASSISTANT])
def test_a_conversation_may_end_with_a_system_message_or_a_prefill(role: Role) -> None:
    """OpenAI accepts both; whether a provider can take it is the provider adapter's call."""
    asked = request(messages=(USER, Message(role, "ok")))
    assert asked.prefill is (role is Role.ASSISTANT)
    assert not asked.asks  # the cache keys by the last user message: it bypasses the cache


def test_a_prefill_is_seen_past_trailing_system_messages() -> None:
    messages = (USER, Message(Role.ASSISTANT, "Sure:"), Message(Role.SYSTEM, "be brief"))
    assert request(messages=messages).prefill


def test_a_conversation_of_system_messages_only_is_refused_naming_messages() -> None:
    with pytest.raises(InvalidRequest, match="at least one user message") as caught:
        request(messages=(Message(Role.SYSTEM, "be brief"),))
    assert caught.value.param == "messages"


def test_a_conversation_ending_with_the_user_is_valid() -> None:
    messages = (
        Message(Role.SYSTEM, "be brief"),
        Message(Role.USER, "hi"),
        Message(Role.ASSISTANT, "hello"),
        Message(Role.USER, "how are you?"),
    )

    assert request(messages=messages).messages == messages


def test_input_up_to_the_limit_is_valid_and_one_more_character_is_not() -> None:
    half = MAX_INPUT_CHARS // 2
    at_limit = (
        Message(Role.SYSTEM, "s" * half),
        Message(Role.USER, "u" * (MAX_INPUT_CHARS - half)),
    )
    request(messages=at_limit)

    over = (*at_limit[:1], Message(Role.USER, "u" * (MAX_INPUT_CHARS - half + 1)))
    with pytest.raises(InvalidRequest) as caught:
        request(messages=over)

    assert str(caught.value) == (
        f"input is {MAX_INPUT_CHARS + 1} characters; the limit is {MAX_INPUT_CHARS}"
    )


@given(temperature=st.none() | st.floats(min_value=0.0, max_value=2.0))
def test_temperature_within_0_and_2_is_valid(temperature: float | None) -> None:
    assert request(temperature=temperature).temperature == temperature


@pytest.mark.parametrize("temperature", [0.0, 2.0])
def test_temperature_bounds_are_inclusive(temperature: float) -> None:
    assert request(temperature=temperature).temperature == temperature


@given(
    temperature=st.floats(max_value=0.0, exclude_max=True)
    | st.floats(min_value=2.0, exclude_min=True)
    | st.just(math.nan)
)
def test_temperature_outside_0_and_2_is_rejected(temperature: float) -> None:
    with pytest.raises(InvalidRequest, match=r"temperature must be within \[0, 2\], got"):
        request(temperature=temperature)


@given(max_tokens=st.none() | st.integers(min_value=1, max_value=MAX_OUTPUT_TOKENS))
def test_max_tokens_within_the_limit_is_valid(max_tokens: int | None) -> None:
    assert request(max_tokens=max_tokens).max_tokens == max_tokens


@given(max_tokens=st.integers(max_value=0) | st.integers(min_value=MAX_OUTPUT_TOKENS + 1))
def test_max_tokens_outside_the_limit_is_rejected(max_tokens: int) -> None:
    with pytest.raises(InvalidRequest) as caught:
        request(max_tokens=max_tokens)

    message = str(caught.value)
    assert f"max_tokens must be within [1, {MAX_OUTPUT_TOKENS}]" in message
    assert f"got {max_tokens}" in message


@given(
    contents=st.lists(st.text(min_size=1, max_size=20).filter(str.strip), min_size=1, max_size=5),
    system_positions=st.sets(st.integers(min_value=0, max_value=3)),
)
def test_system_joins_every_system_message(contents: list[str], system_positions: set[int]) -> None:
    roles = [
        Role.SYSTEM if i in system_positions and i < len(contents) - 1 else Role.USER
        for i in range(len(contents))
    ]
    req = request(messages=tuple(Message(r, c) for r, c in zip(roles, contents, strict=True)))

    expected = [c for r, c in zip(roles, contents, strict=True) if r is Role.SYSTEM]
    assert req.system == ("\n\n".join(expected) if expected else None)


def test_a_request_is_immutable() -> None:
    req = request()

    with pytest.raises(AttributeError):
        req.model = "other"  # type: ignore[misc]
