"""ModelRouter: explicit routes and aliases first, then default name prefixes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.errors import UnknownModel
from domain.routing import DEFAULT_PREFIXES, ModelRouter, Route

BOTH = ("openai", "gemini")

suffixes = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-.", max_size=20)


@pytest.mark.parametrize(
    ("model", "provider"),
    [
        ("gpt-4o-mini", "openai"),
        ("o1", "openai"),
        ("o1-mini", "openai"),
        ("o3-mini", "openai"),
        ("o4-mini", "openai"),
        ("chatgpt-4o-latest", "openai"),
        ("gemini-2.0-flash", "gemini"),
    ],
)
def test_default_prefixes_route_to_their_provider(model: str, provider: str) -> None:
    assert ModelRouter(BOTH).route(model) == Route(provider, model)


@given(prefix_and_provider=st.sampled_from(DEFAULT_PREFIXES), suffix=suffixes)
def test_any_model_with_a_default_prefix_keeps_its_name(
    prefix_and_provider: tuple[str, str], suffix: str
) -> None:
    prefix, provider = prefix_and_provider
    model = prefix + suffix

    assert ModelRouter(BOTH).route(model) == Route(provider, model)


@pytest.mark.parametrize("model", ["claude-3-opus", "llama-3", "GPT-4o", "o2-mini", "gemini", ""])
def test_a_model_no_provider_serves_is_unknown(model: str) -> None:
    with pytest.raises(UnknownModel, match="no provider serves this model") as caught:
        ModelRouter(BOTH).route(model)

    assert caught.value.model == model


@given(
    name=st.sampled_from(["gpt-4o", "gemini-pro", "o1", "fast", "smart"]),
    route=st.sampled_from([Route("gemini", "gemini-2.0-flash"), Route("openai", "gpt-4o-mini")]),
)
def test_an_explicit_route_wins_over_prefixes(name: str, route: Route) -> None:
    router = ModelRouter(BOTH, routes={name: route})

    assert router.route(name) == route


def test_an_alias_renames_the_upstream_model() -> None:
    router = ModelRouter(BOTH, routes={"fast": Route("gemini", "gemini-2.0-flash-lite")})

    assert router.route("fast") == Route("gemini", "gemini-2.0-flash-lite")
    assert router.route("gpt-4o") == Route("openai", "gpt-4o")  # prefixes still apply


def test_a_provider_without_keys_is_not_routable() -> None:
    router = ModelRouter(["gemini"])

    with pytest.raises(UnknownModel) as caught:
        router.route("gpt-4o")

    message = str(caught.value)
    assert "openai" in message
    assert "no API keys" in message
    assert caught.value.routable == ("gemini-*",)
    assert "routable models: gemini-*" in message


def test_an_explicit_route_to_a_provider_without_keys_is_not_routable() -> None:
    router = ModelRouter(["openai"], routes={"fast": Route("gemini", "gemini-2.0-flash")})

    with pytest.raises(UnknownModel, match="served by gemini, which has no API keys"):
        router.route("fast")
    assert "fast" not in router.routable()


def test_unknown_model_message_names_the_routable_models() -> None:
    router = ModelRouter(
        BOTH, routes={"smart": Route("openai", "gpt-4o"), "fast": Route("gemini", "x")}
    )

    with pytest.raises(UnknownModel) as caught:
        router.route("claude-3")

    routable = caught.value.routable
    assert routable[:2] == ("fast", "smart")
    assert set(routable[2:]) == {f"{prefix}*" for prefix, _ in DEFAULT_PREFIXES}
    for name in routable:
        assert name in str(caught.value)


def test_unknown_model_message_says_when_nothing_is_routable() -> None:
    with pytest.raises(UnknownModel, match="no provider has API keys") as caught:
        ModelRouter([]).route("gpt-4o")

    assert caught.value.routable == ()


@given(
    available=st.sets(st.sampled_from(BOTH)),
    model=st.sampled_from(["gpt-4o", "o3-mini", "gemini-pro", "claude-3"]),
)
def test_routing_succeeds_only_to_an_available_provider(available: set[str], model: str) -> None:
    router = ModelRouter(available)

    matches_a_routable_pattern = any(
        model.startswith(pattern.removesuffix("*")) for pattern in router.routable()
    )

    if matches_a_routable_pattern:
        assert router.route(model).provider in available
    else:
        with pytest.raises(UnknownModel) as caught:
            router.route(model)
        assert caught.value.routable == router.routable()


def test_custom_prefixes_replace_the_defaults() -> None:
    router = ModelRouter(["local"], prefixes=[("llama-", "local")])

    assert router.route("llama-3") == Route("local", "llama-3")
    assert router.routable() == ("llama-*",)
