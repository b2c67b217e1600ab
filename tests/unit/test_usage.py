from __future__ import annotations

from datetime import UTC, datetime

import pytest

from domain.key_pool import ApiKey, KeyPool
from domain.usage import Budget, Budgets, Spent, Window


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("window", "now", "start", "end", "period"),
    [
        (Window.HOUR, "2026-12-02T20:41:07", "2026-12-02T20:00", "2026-12-02T21:00",
         "hour:2026-12-02T20"),
        (Window.DAY, "2026-12-02T23:59:59", "2026-12-02T00:00", "2026-12-03T00:00",
         "day:2026-12-02"),
        (Window.MONTH, "2026-12-31T12:00:00", "2026-12-01T00:00", "2027-01-01T00:00",
         "month:2026-12"),
        (Window.MONTH, "2027-02-10T00:00:00", "2027-02-01T00:00", "2027-03-01T00:00",
         "month:2027-02"),
    ],
)  # fmt: skip
def test_windows_follow_the_utc_calendar(
    window: Window, now: str, start: str, end: str, period: str
) -> None:
    begins, ends = window.bounds(at(now))
    assert (begins.timestamp(), ends.timestamp()) == (at(start), at(end))
    assert window.period(at(now)) == period


def test_a_budget_is_tokens_per_window() -> None:
    assert Budget.parse("1000000/day") == Budget(1_000_000, Window.DAY)
    assert Budget.parse(" 50_000 / Hour ") == Budget(50_000, Window.HOUR)
    assert str(Budget.parse("7/month")) == "7/month"


@pytest.mark.parametrize("text", ["1000", "1000/week", "0/day", "-5/day", "lots/day", "/day"])
def test_a_bad_budget_says_what_is_expected(text: str) -> None:
    with pytest.raises(ValueError, match="day"):
        Budget.parse(text)


def test_a_tenant_budget_overrides_the_default() -> None:
    budgets = Budgets(Budget(100, Window.DAY), {"team-a": Budget(5, Window.HOUR)})
    assert budgets.of("team-a") == Budget(5, Window.HOUR)
    assert budgets.of("team-b") == Budget(100, Window.DAY)
    assert Budgets().of("team-a") is None
    assert Budgets().window("team-a") is Window.DAY


def test_spent_counts_provider_tokens_not_saved_ones() -> None:
    counts = {
        ("gpt-4o", "prompt"): 10,
        ("gpt-4o", "completion"): 5,
        ("gpt-4o", "saved"): 1000,
        ("gpt-4o", "requests"): 3,
        ("gemini-2.0-flash", "prompt"): 2,
    }
    spent = Spent("team-a", Window.DAY, "day:x", datetime.now(UTC), counts)
    assert spent.tokens == 17
    assert spent.by_model()["gemini-2.0-flash"] == {
        "prompt": 2, "completion": 0, "saved": 0, "requests": 0,
    }  # fmt: skip
    assert list(spent.by_model()) == ["gemini-2.0-flash", "gpt-4o"]


def test_a_pool_takes_in_what_other_processes_saw() -> None:
    one, two, three = (ApiKey(f"sk-{n}") for n in ("one", "two", "three"))
    pool = KeyPool("openai", [one, two, three], default_cooldown=30.0)
    pool.cool_down(two, 100.0, 50.0)
    pool.merge({one.fingerprint: 20.0, two.fingerprint: 5.0, "key-unknown": 99.0}, set(), 100.0)
    assert pool.usable(100.0) == [three]
    assert pool.usable(121.0) == [one, three]  # one's shared cooldown ended
    assert pool.usable(151.0) == [one, two, three]  # two's own, longer cooldown was kept
    pool.merge({}, {three.fingerprint, "key-unknown"}, 151.0)
    assert pool.usable(151.0) == [one, two]
    assert pool.disabled() == 1
