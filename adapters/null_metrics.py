from __future__ import annotations

from application.ports import Metrics
from domain.circuit_breaker import BreakerState
from domain.model import CacheStatus, Usage


class NullMetrics(Metrics):
    """Records nothing; stands in until the Prometheus adapter is wired."""

    def request_started(self) -> None:
        pass

    def request_finished(
        self, provider: str, model: str, cache_status: CacheStatus, status: str, seconds: float
    ) -> None:
        pass

    def attempt(self, provider: str, outcome: str) -> None:
        pass

    def tokens(self, provider: str, model: str, usage: Usage) -> None:
        pass

    def cache_lookup(self, status: CacheStatus, similarity: float | None) -> None:
        pass

    def cache_error(self, backend: str, operation: str) -> None:
        pass

    def breaker_state(self, provider: str, state: BreakerState) -> None:
        pass

    def key_pool(self, provider: str, usable: int, cooling_down: int, disabled: int) -> None:
        pass
