from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.cache_policy import cache_scope, entry_key, interchangeable, point_id
from domain.model import InferenceRequest, Message, Role


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("100 USD to EUR", "100 EUR to USD"),
        ("What is 2+3?", "What is 2+2?"),
        ("What is 2+2?", "What is 2+2+2?"),
        ("price of item 1.5", "price of item 15"),
        ("Is Paris in France?", "Is Paris not in France?"),
        ("Why doesn't it compile?", "Why does it compile?"),
        ("explain os.path.join", "explain os.path.split"),
        ("what does user_id mean", "what does user_name mean"),
        ("call getUserById", "call getUserByName"),
        ("summarize the `config` file", "summarize the `settings` file"),
        ("convert 10 km to miles", "convert 10 miles to km"),
        ("does the dog chase the cat", "does the cat chase the dog"),
    ],
)
def test_prompts_differing_in_numbers_identifiers_or_negation_are_not_interchangeable(
    a: str, b: str
) -> None:
    assert not interchangeable(a, b)
    assert not interchangeable(b, a)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("What is the capital of France?", "Tell me the capital city of France."),
        ("What is 2+2?", "what's 2 + 2"),
        ("convert 100 USD to EUR", "how much is 100 USD in EUR"),
        ("I don't like it, why?", "Why is it that I don't like it?"),
        ("explain os.path.join briefly", "briefly, what does os.path.join do"),
    ],
)
def test_paraphrases_keeping_them_are_interchangeable(a: str, b: str) -> None:
    assert interchangeable(a, b)


def test_a_pure_reordering_is_treated_as_a_different_prompt() -> None:
    # conservative: "briefly explain X" loses a hit, but "10 km to miles" never answers
    # "10 miles to km"
    assert not interchangeable("explain os.path.join briefly", "briefly explain os.path.join")


@given(st.text(max_size=80))
def test_every_prompt_is_interchangeable_with_itself(text: str) -> None:
    assert interchangeable(text, text)


def ask(*turns: tuple[Role, str], **kw: object) -> InferenceRequest:
    return InferenceRequest("gpt-4o", tuple(Message(r, t) for r, t in turns), **kw)  # type: ignore[arg-type]


def test_the_scope_covers_context_parameters_tenant_provider_and_embedder() -> None:
    base = ask((Role.USER, "hi"))
    scope = cache_scope(base, "openai", "local:minilm")
    assert cache_scope(ask((Role.USER, "something else")), "openai", "local:minilm") == scope
    different = [
        cache_scope(ask((Role.SYSTEM, "be brief"), (Role.USER, "hi")), "openai", "local:minilm"),
        cache_scope(
            ask((Role.USER, "a"), (Role.ASSISTANT, "b"), (Role.USER, "hi")),
            "openai",
            "local:minilm",
        ),
        cache_scope(ask((Role.USER, "hi"), temperature=0.0), "openai", "local:minilm"),
        cache_scope(ask((Role.USER, "hi"), max_tokens=10), "openai", "local:minilm"),
        cache_scope(ask((Role.USER, "hi"), tenant="t1"), "openai", "local:minilm"),
        cache_scope(base, "gemini", "local:minilm"),
        cache_scope(base, "openai", "openai:text-embedding-3-small:1536"),
    ]
    assert scope not in different
    assert len(set(different)) == len(different)


def test_entry_keys_ignore_whitespace_and_point_ids_are_stable_uuids() -> None:
    assert entry_key("s", "hello  world ") == entry_key("s", " hello world")
    assert entry_key("s", "hello world") != entry_key("t", "hello world")
    key = entry_key("s", "hello")
    assert point_id(key) == point_id(key)
    assert len(point_id(key)) == 36
