"""In-memory request statistics of the simulator, readable by tests and over HTTP."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: Endpoint names used as counter keys.
OPENAI_CHAT = "openai.chat"
OPENAI_CHAT_STREAM = "openai.chat.stream"
OPENAI_EMBEDDINGS = "openai.embeddings"
OPENAI_MODELS = "openai.models"
GEMINI_GENERATE = "gemini.generate"
GEMINI_STREAM = "gemini.stream"
GEMINI_EMBED = "gemini.embed"
GEMINI_BATCH_EMBED = "gemini.batch_embed"
GEMINI_MODELS = "gemini.models"
ANTHROPIC_MESSAGES = "anthropic.messages"
ANTHROPIC_STREAM = "anthropic.messages.stream"
ANTHROPIC_MODELS = "anthropic.models"


@dataclass
class SimulatorStats:
    """Counters of one simulator instance. Keys are identified by fingerprint only.

    ``by_status`` keys are status codes as strings, plus ``"reset"`` (connection reset
    without a response) and ``"499"`` (the client went away before the answer).
    ``client_disconnects`` counts requests and streams that saw the client close the
    connection before the simulator finished (what a proxy does when its own client
    cancels).
    """

    requests_total: int = 0
    by_endpoint: Counter[str] = field(default_factory=Counter)
    by_key: Counter[str] = field(default_factory=Counter)
    by_key_endpoint: dict[str, Counter[str]] = field(default_factory=dict)
    by_status: Counter[str] = field(default_factory=Counter)
    by_model: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    in_flight: int = 0
    max_in_flight: int = 0
    streams_started: int = 0
    streams_completed: int = 0
    client_disconnects: int = 0
    client_disconnects_by_endpoint: Counter[str] = field(default_factory=Counter)

    def request_started(self, endpoint: str) -> None:
        self.requests_total += 1
        self.by_endpoint[endpoint] += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def request_finished(self) -> None:
        self.in_flight -= 1

    def key_seen(self, fingerprint: str, endpoint: str) -> None:
        self.by_key[fingerprint] += 1
        self.by_key_endpoint.setdefault(fingerprint, Counter())[endpoint] += 1

    def client_disconnected(self, endpoint: str) -> None:
        self.client_disconnects += 1
        self.client_disconnects_by_endpoint[endpoint] += 1

    def reset(self) -> None:
        """Zero every counter (``in_flight`` keeps counting the requests still running)."""
        in_flight = self.in_flight
        fresh = SimulatorStats()
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(fresh, name))
        self.in_flight = in_flight
        self.max_in_flight = in_flight

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready copy (what ``GET /_sim/stats`` returns)."""
        return {
            "requests_total": self.requests_total,
            "by_endpoint": dict(self.by_endpoint),
            "by_key": dict(self.by_key),
            "by_key_endpoint": {k: dict(v) for k, v in self.by_key_endpoint.items()},
            "by_status": dict(self.by_status),
            "by_model": dict(self.by_model),
            "faults": dict(self.faults),
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "streams_started": self.streams_started,
            "streams_completed": self.streams_completed,
            "client_disconnects": self.client_disconnects,
            "client_disconnects_by_endpoint": dict(self.client_disconnects_by_endpoint),
        }

    async def wait_until(
        self,
        predicate: Callable[[SimulatorStats], bool],
        within_s: float = 2.0,
        interval: float = 0.01,
    ) -> bool:
        """Poll ``predicate(self)`` until it holds or ``within_s`` passes; returns the result."""
        deadline = time.monotonic() + within_s
        while not predicate(self):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(interval)
        return True
