"""ModelRouter: explicit routes and aliases first, then default name prefixes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.errors import (
    CircuitOpen,
    ConnectionsExhausted,
    DeadlineExceeded,
    InvalidRequest,
    NoTimeToRetry,
    NoUsableKey,
    UnknownModel,
    UpstreamFault,
    UpstreamRejected,
    UpstreamUnavailable,
)
from domain.routing import DEFAULT_PREFIXES, ModelRouter, Route, Target, falls_back

BOTH = ("openai", "gemini")
ALL = (*BOTH, "anthropic")

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
        ("claude-sonnet-4-5", "anthropic"),
        ("text-embedding-3-small", "openai"),
        ("text-embedding-004", "gemini"),
        ("gemini-embedding-001", "gemini"),
    ],
)
def test_default_prefixes_route_to_their_provider(model: str, provider: str) -> None:
    assert ModelRouter(ALL).route(model) == Route(provider, model)


@given(prefix_and_provider=st.sampled_from(DEFAULT_PREFIXES), suffix=suffixes)
def test_any_model_with_a_default_prefix_keeps_its_name(
    prefix_and_provider: tuple[str, str], suffix: str
) -> None:
    prefix, provider = prefix_and_provider
    model = prefix + suffix

    assert ModelRouter(ALL).route(model) == Route(provider, model)


@pytest.mark.parametrize("model", ["mistral-large", "llama-3", "GPT-4o", "o2-mini", "gemini", ""])
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
    assert caught.value.routable == ("gemini-*", "text-embedding-004*", "embedding-*")
    assert "routable models: gemini-*" in message


def test_an_explicit_route_to_a_provider_without_keys_is_not_routable() -> None:
    router = ModelRouter(["openai"], routes={"fast": Route("gemini", "gemini-2.0-flash")})

    with pytest.raises(UnknownModel, match="served by gemini, which has no API keys"):
        router.route("fast")
    assert "fast" not in router.routable()


def test_unknown_model_message_names_the_routable_models() -> None:
    router = ModelRouter(
        ALL, routes={"smart": Route("openai", "gpt-4o"), "fast": Route("gemini", "x")}
    )

    with pytest.raises(UnknownModel) as caught:
        router.route("llama-3")

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


# -- MODEL_FALLBACKS ----------------------------------------------------------------------------

CHAINS = {"gpt-4o": ("gemini-1.5-pro", "gemini-1.5-flash"), "fast": ("gemini-2.0-flash",)}
FAST = {"fast": Route("openai", "gpt-4o-mini")}


def test_targets_are_the_model_then_its_chain_in_order() -> None:
    router = ModelRouter(BOTH, FAST, fallbacks=CHAINS)
    assert router.targets("gpt-4o") == (
        Target("gpt-4o", Route("openai", "gpt-4o")),
        Target("gemini-1.5-pro", Route("gemini", "gemini-1.5-pro")),
        Target("gemini-1.5-flash", Route("gemini", "gemini-1.5-flash")),
    )
    assert router.targets("fast")[0] == Target("fast", Route("openai", "gpt-4o-mini"))
    assert router.targets("gpt-4o-mini") == (Target("gpt-4o-mini", Route("openai", "gpt-4o-mini")),)


def test_chains_are_not_followed_transitively_and_are_deduplicated() -> None:
    chains = {"gpt-4o": ("gpt-4o-mini", "gpt-4o-mini"), "gpt-4o-mini": ("gemini-x",)}
    router = ModelRouter(BOTH, fallbacks=chains)
    assert [t.model for t in router.targets("gpt-4o")] == ["gpt-4o", "gpt-4o-mini"]


def test_models_whose_provider_has_no_keys_are_left_out_and_reported() -> None:
    router = ModelRouter(["openai"], fallbacks={"gpt-4o": ("gemini-1.5-pro", "gpt-4o-mini")})
    assert [t.model for t in router.targets("gpt-4o")] == ["gpt-4o", "gpt-4o-mini"]
    assert router.left_out() == (("gpt-4o", "gemini-1.5-pro", "gemini"),)


def test_a_model_without_keys_is_answered_by_its_fallbacks_and_listed_as_routable() -> None:
    router = ModelRouter(["gemini"], fallbacks={"gpt-4o": ("gemini-1.5-flash",)})
    assert [t.model for t in router.targets("gpt-4o")] == ["gemini-1.5-flash"]
    assert router.left_out() == (("gpt-4o", "gpt-4o", "openai"),)
    assert "gpt-4o" in router.routable()
    with pytest.raises(UnknownModel, match="no API keys"):
        router.targets("gpt-4o-mini")


def test_a_chain_with_nothing_routable_is_the_models_own_error() -> None:
    router = ModelRouter(["openai"], fallbacks={"gemini-1.5-pro": ("gemini-1.5-flash",)})
    with pytest.raises(UnknownModel, match="gemini, which has no API keys"):
        router.targets("gemini-1.5-pro")
    assert "gemini-1.5-pro" not in router.routable()


@pytest.mark.parametrize(
    ("chains", "problem"),
    [
        ({"gpt-4o": ("gemini-1.5-flash", "gpt-4o")}, "names gpt-4o itself"),
        ({"gpt-4o": ()}, "names no fallback"),
        ({"gpt-4o": ("llama-3",)}, "llama-3 .in gpt-4o's chain. routes nowhere"),
        ({"llama-3": ("gpt-4o",)}, "llama-3 .in llama-3's chain. routes nowhere"),
    ],
)
def test_bad_chains_are_refused(chains: dict[str, tuple[str, ...]], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        ModelRouter(BOTH, fallbacks=chains)


def test_an_alias_routes_a_chain_model() -> None:
    router = ModelRouter(BOTH, {"claude-3": Route("openai", "my-claude")},
                         fallbacks={"claude-3": ("gemini-1.5-flash",)})  # fmt: skip
    assert router.targets("claude-3")[0].route == Route("openai", "my-claude")


def test_only_the_listed_failures_fall_back() -> None:
    assert falls_back(CircuitOpen("openai", 3.0))
    assert falls_back(NoUsableKey("openai", None))
    assert falls_back(NoTimeToRetry("deadline reached after 2 attempts"))
    assert falls_back(UpstreamUnavailable("openai", 4, UpstreamFault("503")))
    assert not falls_back(DeadlineExceeded("the deadline passed"))
    assert not falls_back(UpstreamRejected("400"))
    assert not falls_back(InvalidRequest("bad"))
    assert not falls_back(ConnectionsExhausted("pool full"))


@pytest.mark.parametrize("pattern", ["gpt-*", "gemini-*", "o1*", "*"])
def test_a_pattern_is_never_routed_as_a_model(pattern: str) -> None:
    router = ModelRouter(BOTH)
    with pytest.raises(UnknownModel, match="a pattern of model names") as caught:
        router.targets(pattern)
    assert caught.value.param == "model"
    assert router.provider_of(pattern) is None


def test_named_lists_configured_models_that_answer_by_the_provider_that_serves_them() -> None:
    router = ModelRouter(
        ["gemini"],
        routes={"fast": Route("gemini", "gemini-2.0-flash"), "local": Route("openai", "llama")},
        fallbacks={"gpt-4o": ("gemini-1.5-pro",)},
    )
    # `local` has no keys; gpt-4o has none of its own but its fallback answers
    assert router.named() == {"fast": "gemini", "gemini-1.5-pro": "gemini", "gpt-4o": "gemini"}
    assert router.provider_of("gemini-2.5-pro") == "gemini"
    assert router.provider_of("gpt-4o-mini") is None
