from __future__ import annotations

from application.ports import Metrics
from domain.circuit_breaker import BreakerState
from domain.model import CacheStatus, Usage


class NullMetrics(Metrics):
    """Records nothing; stands in until the Prometheus adapter is wired."""

    def attempt(self, provider: str, outcome: str) -> None:
        pass

    def tokens(self, provider: str, model: str, usage: Usage) -> None:
        pass

    def cache_lookup(self, status: CacheStatus) -> None:
        pass

    def cache_error(self, operation: str) -> None:
        pass

    def breaker_state(self, provider: str, state: BreakerState) -> None:
        pass
