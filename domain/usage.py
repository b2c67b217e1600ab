"""Token budgets per tenant: calendar windows (UTC) and what a tenant has left in one. Pure: the
caller passes the wall-clock time (seconds since the epoch)."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

ANONYMOUS = "anonymous"  # the one tenant when no client tokens are configured


class Window(enum.Enum):
    """A budget's period, aligned on the UTC calendar: it resets on the hour, at midnight UTC,
    or on the first of the month."""

    HOUR = "hour"
    DAY = "day"
    MONTH = "month"

    def bounds(self, wall: float) -> tuple[datetime, datetime]:
        """The window that holds `wall`: its start and its end (the next one's start)."""
        t = datetime.fromtimestamp(wall, UTC)
        if self is Window.HOUR:
            start = t.replace(minute=0, second=0, microsecond=0)
            return start, datetime.fromtimestamp(start.timestamp() + 3600, UTC)
        if self is Window.DAY:
            start = t.replace(hour=0, minute=0, second=0, microsecond=0)
            return start, datetime.fromtimestamp(start.timestamp() + 86400, UTC)
        start = t.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        end = (
            start.replace(year=start.year + 1, month=1)
            if start.month == 12
            else start.replace(month=start.month + 1)
        )
        return start, end

    def period(self, wall: float) -> str:
        """The window's name, e.g. "day:2026-12-02": usage is counted under it."""
        start, _ = self.bounds(wall)
        shown = {Window.HOUR: "%Y-%m-%dT%H", Window.DAY: "%Y-%m-%d", Window.MONTH: "%Y-%m"}
        return f"{self.value}:{start.strftime(shown[self])}"


@dataclass(frozen=True, slots=True)
class Budget:
    """At most `tokens` (prompt + completion, as the providers reported them) per window."""

    tokens: int
    window: Window

    def __post_init__(self) -> None:
        if self.tokens < 1:
            raise ValueError("a budget needs at least 1 token")

    @classmethod
    def parse(cls, text: str) -> Budget:
        """`1000000/day`, `50000/hour`, `20000000/month` (`_` may group digits)."""
        amount, sep, window = text.strip().partition("/")
        windows = ", ".join(w.value for w in Window)
        try:
            tokens = int(amount.strip())
            period = Window(window.strip().lower())
        except ValueError:
            raise ValueError(
                f"{text.strip()!r} is not tokens/window with window one of {windows} "
                "(e.g. 1000000/day)"
            ) from None
        if not sep or tokens < 1:
            raise ValueError(f"{text.strip()!r}: the budget must be a positive number of tokens")
        return cls(tokens, period)

    def __str__(self) -> str:
        return f"{self.tokens}/{self.window.value}"


@dataclass(frozen=True, slots=True)
class Budgets:
    """`default` (TENANT_TOKEN_BUDGET) for every tenant unless `per_tenant` (TENANT_BUDGETS)
    names it. A tenant with neither has no budget; its usage is counted by day."""

    default: Budget | None = None
    per_tenant: Mapping[str, Budget] = field(default_factory=dict)

    def of(self, tenant: str) -> Budget | None:
        return self.per_tenant.get(tenant, self.default)

    def window(self, tenant: str) -> Window:
        budget = self.of(tenant)
        return budget.window if budget is not None else Window.DAY


KINDS = ("prompt", "completion", "saved", "requests")


@dataclass(frozen=True, slots=True)
class Spent:
    """A tenant's counts in one window: `counts[(model, kind)]`, kind one of KINDS ("saved":
    tokens answered from the cache, which cost nothing and count against no budget)."""

    tenant: str
    window: Window
    period: str
    resets_at: datetime
    counts: Mapping[tuple[str, str], int]

    @property
    def tokens(self) -> int:
        """What counts against the budget: prompt and completion tokens from providers."""
        return sum(n for (_, kind), n in self.counts.items() if kind in ("prompt", "completion"))

    def by_model(self) -> dict[str, dict[str, int]]:
        """model -> kind -> count, every kind present, models in name order."""
        models: dict[str, dict[str, int]] = {}
        for (model, kind), count in sorted(self.counts.items()):
            models.setdefault(model, dict.fromkeys(KINDS, 0))[kind] = count
        return models
