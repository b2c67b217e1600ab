from __future__ import annotations

from domain.cache_policy import cache_scope, entry_key, point_id
from domain.model import InferenceRequest, Message, Role


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


def test_entry_keys_are_byte_exact_and_point_ids_are_stable_uuids() -> None:
    assert entry_key("s", "hello world") == entry_key("s", "hello world")
    assert entry_key("s", "if x:\n    y()") != entry_key("s", "if x:\n  y()")
    assert entry_key("s", "hello  world") != entry_key("s", "hello world")
    assert entry_key("s", "hello world") != entry_key("t", "hello world")
    key = entry_key("s", "hello")
    assert point_id(key) == point_id(key)
    assert len(point_id(key)) == 36
