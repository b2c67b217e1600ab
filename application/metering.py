"""Usage per tenant and model, and token budgets: counted after each answer, checked before a
request goes upstream. Answers from the cache cost nothing: they are counted as "saved"."""

from __future__ import annotations

import logging
from collections import Counter
from datetime import datetime

from application.ports import Clock, Metrics, UsageLedger
from domain.errors import BudgetExhausted
from domain.model import Usage
from domain.usage import ANONYMOUS, Budget, Budgets, Spent

log = logging.getLogger(__name__)

# Counters of a period are kept this long after it ends (a late /v1/usage, a clock off a bit).
KEEP_AFTER = 86400.0


def tenant_name(tenant: str) -> str:
    """The name usage and metrics know a request's tenant by."""
    return tenant or ANONYMOUS


class Metering:
    """Never fails a request for its own sake: a ledger that cannot be read admits the call, one
    that cannot be written loses that count (the ledger adapters fall back before that)."""

    def __init__(
        self, ledger: UsageLedger, budgets: Budgets, clock: Clock, metrics: Metrics
    ) -> None:
        self._ledger, self._budgets, self._clock, self._metrics = ledger, budgets, clock, metrics

    def budget(self, tenant: str) -> Budget | None:
        return self._budgets.of(tenant_name(tenant))

    async def check(self, tenant: str) -> None:
        """Raises BudgetExhausted when the tenant has no tokens left in its window."""
        budget = self.budget(tenant)
        if budget is None:
            return
        try:
            spent = await self.spent(tenant)
        except Exception as error:
            log.warning("usage unreadable (%s): budget not checked", type(error).__name__)
            return
        if spent.tokens >= budget.tokens:
            wait = max(0.0, spent.resets_at.timestamp() - self._clock.wall())
            raise BudgetExhausted(spent.tenant, spent.tokens, str(budget), wait)

    async def spent(self, tenant: str) -> Spent:
        """The tenant's usage in its budget's current window (a day when it has no budget)."""
        name = tenant_name(tenant)
        window, wall = self._budgets.window(name), self._clock.wall()
        period = window.period(wall)
        counts = await self._ledger.read(name, period)
        return Spent(name, window, period, window.bounds(wall)[1], counts)

    async def record(self, tenant: str, model: str, usage: Usage, cached: bool) -> None:
        name = tenant_name(tenant)
        tokens = usage.input_tokens + usage.output_tokens
        counts: Counter[tuple[str, str]] = Counter({(model, "requests"): 1})
        if cached:
            counts[(model, "saved")] = tokens
        else:
            counts[(model, "prompt")] = usage.input_tokens
            counts[(model, "completion")] = usage.output_tokens
        for (_, kind), count in counts.items():
            if kind != "requests" and count > 0:
                self._metrics.tenant_tokens(name, model, kind, count)
        window, wall = self._budgets.window(name), self._clock.wall()
        end: datetime = window.bounds(wall)[1]
        try:
            await self._ledger.add(name, window.period(wall), +counts, end.timestamp() + KEEP_AFTER)
        except Exception as error:
            log.warning("usage not recorded (%s)", type(error).__name__)
