"""Which provider serves a model, and under which name."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from domain.errors import UnknownModel

DEFAULT_PREFIXES: tuple[tuple[str, str], ...] = (
    ("gpt-", "openai"),
    ("o1", "openai"),
    ("o3", "openai"),
    ("o4", "openai"),
    ("chatgpt-", "openai"),
    ("gemini-", "gemini"),
)


@dataclass(frozen=True, slots=True)
class Route:
    provider: str
    model: str


class ModelRouter:
    """Routes by explicit model map first (aliases may rename the model), then by name prefix.

    `routes` maps a client-facing model name to (provider, upstream model). Only providers in
    `available` (those with keys) are routable.
    """

    def __init__(
        self,
        available: Iterable[str],
        routes: Mapping[str, Route] | None = None,
        prefixes: Iterable[tuple[str, str]] = DEFAULT_PREFIXES,
    ) -> None:
        self._available = frozenset(available)
        self._routes = dict(routes or {})
        self._prefixes = tuple(prefixes)

    def route(self, model: str) -> Route:
        route = self._routes.get(model)
        if route is None:
            provider = next((p for prefix, p in self._prefixes if model.startswith(prefix)), None)
            if provider is None:
                raise UnknownModel(model, "no provider serves this model", self.routable())
            route = Route(provider, model)
        if route.provider not in self._available:
            raise UnknownModel(
                model,
                f"it is served by {route.provider}, which has no API keys configured",
                self.routable(),
            )
        return route

    def routable(self) -> tuple[str, ...]:
        patterns = [f"{prefix}*" for prefix, p in self._prefixes if p in self._available]
        named = [name for name, r in self._routes.items() if r.provider in self._available]
        return tuple(sorted(named) + patterns)
