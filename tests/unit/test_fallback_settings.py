"""MODEL_FALLBACKS as configured: parsed, checked at startup, chains without keys reported."""

from __future__ import annotations

import logging

import pytest

from adapters.process.config_error import ConfigError
from adapters.process.lifecycle import build_router
from adapters.process.settings import load_settings


def test_chains_are_parsed_in_order_and_deduplicated() -> None:
    settings = load_settings(
        model_fallbacks=" gpt-4o = gemini-1.5-pro | gemini-1.5-flash|gemini-1.5-pro , "
        "gemini-1.5-pro=gpt-4o,"
    )
    assert settings.model_fallbacks == {
        "gpt-4o": ("gemini-1.5-pro", "gemini-1.5-flash"),
        "gemini-1.5-pro": ("gpt-4o",),
    }
    assert load_settings().model_fallbacks == {}


def test_a_chain_may_name_a_model_routes_alias() -> None:
    settings = load_settings(
        model_routes="claude-x=openai:my-model", model_fallbacks="claude-x=gpt-4o"
    )
    assert settings.model_fallbacks == {"claude-x": ("gpt-4o",)}
    assert set(settings.configured_models) == {"claude-x", "gpt-4o"}


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("gpt-4o", "is not model=fallback"),
        ("gpt-4o=", "is not model=fallback"),
        ("=gemini-1.5-flash", "is not model=fallback"),
        ("gpt-4o=gemini-1.5-flash,gpt-4o=gpt-4o-mini", "two chains"),
        ("gpt-4o=gemini-1.5-flash|gpt-4o", "names gpt-4o itself"),
        ("gpt-4o=llama-3", "llama-3 .in gpt-4o's chain. routes nowhere"),
        ("llama-3=gpt-4o", "llama-3 .in llama-3's chain. routes nowhere"),
    ],
)
def test_a_bad_chain_is_a_config_error_naming_model_fallbacks(value: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=f"MODEL_FALLBACKS: .*{problem}"):
        load_settings(model_fallbacks=value)


def test_models_without_keys_are_reported_once_at_startup(caplog: pytest.LogCaptureFixture) -> None:
    settings = load_settings(
        model_fallbacks="gpt-4o=gemini-1.5-pro|gpt-4o-mini,o1=gemini-1.5-flash|o3-mini"
    )
    with caplog.at_level(logging.WARNING, logger="llm_proxy"):
        router = build_router(settings, ["openai"])
    assert [r.getMessage() for r in caplog.records] == [
        "MODEL_FALLBACKS: gemini-1.5-pro is served by gemini, which has no API keys: left out "
        "of gpt-4o's chain",
        "MODEL_FALLBACKS: gemini-1.5-flash is served by gemini, which has no API keys: left out "
        "of o1's chain",
    ]
    assert [t.model for t in router.targets("gpt-4o")] == ["gpt-4o", "gpt-4o-mini"]
