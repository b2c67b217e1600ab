"""MAX_CONNECTIONS needs file descriptors: the soft RLIMIT_NOFILE goes up to the hard one at
startup, and a hard limit below what the ports need is said (cli.check_file_limit)."""

from __future__ import annotations

import logging
import resource
from collections.abc import Iterator

import pytest

from adapters.process.settings import load_settings
from cli import check_file_limit


@pytest.fixture
def lowered() -> Iterator[tuple[int, int]]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard < 512:
        pytest.skip(f"needs a finite hard RLIMIT_NOFILE of at least 512 (it is {hard})")
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    yield 256, hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_the_soft_file_limit_is_raised_to_the_hard_one(lowered: tuple[int, int]) -> None:
    _, hard = lowered
    check_file_limit(load_settings(cache_mode="off", max_connections=16))
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == hard


def test_a_hard_limit_below_max_connections_is_a_warning(
    lowered: tuple[int, int], caplog: pytest.LogCaptureFixture
) -> None:
    _, hard = lowered
    caplog.set_level(logging.WARNING)
    check_file_limit(load_settings(cache_mode="off", max_connections=hard))  # two ports: 2x
    check_file_limit(load_settings(cache_mode="off", max_connections=16))
    warnings = [r.getMessage() for r in caplog.records if "RLIMIT_NOFILE" in r.getMessage()]
    assert len(warnings) == 1
    assert "MAX_CONNECTIONS" in warnings[0]
