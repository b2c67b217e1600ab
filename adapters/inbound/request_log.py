"""What every inbound request records when it ends, whichever wire format it came in on: the
outcome (who answered, cache status, a fallback) and the one request log line."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from domain.model import Answer, CacheStatus, RequestLimits

log = logging.getLogger("llm_proxy.requests")


@dataclass
class Outcome:
    provider: str = ""
    cache_status: CacheStatus = CacheStatus.MISS
    fallback_to: str = ""  # the model that answered, when a MODEL_FALLBACKS model did
    tenant: str = ""  # the caller's tenant name, once admitted

    def answered(self, answer: Answer) -> None:
        self.provider = answer.completion.provider
        self.cache_status = answer.cache.status
        if answer.fallback_from is not None:
            self.fallback_to = answer.completion.model

    def log(
        self, status: str, model: str, seconds: float, limits: RequestLimits, **extra: str
    ) -> None:
        """One line per request; `model` already cut short (`limits.shown`), `extra` fields
        such as the protocol go into the structured record."""
        fallback = limits.shown(self.fallback_to)  # the provider's name for it
        log.info(
            "request %s %s %s %.1fms%s",
            status,
            model,
            self.cache_status.value,
            seconds * 1000,
            f" (fallback: {self.provider} {fallback})" if fallback else "",
            extra={
                "outcome": status,
                "latency_ms": round(seconds * 1000, 2),
                "provider": self.provider,
                "model": model,
                "cache_status": self.cache_status.value,
                **({"tenant": self.tenant} if self.tenant else {}),
                **({"fallback_to": fallback} if fallback else {}),
                **extra,
            },
        )
