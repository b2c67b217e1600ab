"""Which provider serves a model, under which name, and which models answer when it cannot."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from domain.errors import CircuitOpen, NoTimeToRetry, NoUsableKey, UnknownModel, UpstreamUnavailable

DEFAULT_PREFIXES: tuple[tuple[str, str], ...] = (
    ("gpt-", "openai"),
    ("o1", "openai"),
    ("o3", "openai"),
    ("o4", "openai"),
    ("chatgpt-", "openai"),
    ("gemini-", "gemini"),
    ("claude-", "anthropic"),
    # embedding models (POST /v1/embeddings); Gemini's text-embedding-004 before OpenAI's prefix
    ("text-embedding-004", "gemini"),
    ("text-embedding-", "openai"),
    ("embedding-", "gemini"),
)

# The provider cannot answer now (breaker open; retries used up, or no time left for the next
# one; every key rate-limited or rejected): another provider may. A client error, the deadline
# itself and a cancellation never fall back: another model would be refused alike, or too late.
FALLBACK_TRIGGERS = (CircuitOpen, UpstreamUnavailable, NoUsableKey, NoTimeToRetry)


def falls_back(error: BaseException) -> bool:
    return isinstance(error, FALLBACK_TRIGGERS)


@dataclass(frozen=True, slots=True)
class Route:
    provider: str
    model: str


@dataclass(frozen=True, slots=True)
class Target:
    """A model that may answer a request: its client-facing name (the cache scope's and the
    metrics' model) and where it goes."""

    model: str
    route: Route


class ModelRouter:
    """Routes by explicit model map first (aliases may rename the model), then by name prefix.

    `routes` maps a client-facing model name to (provider, upstream model). Only providers in
    `available` (those with keys) are routable. `fallbacks` (MODEL_FALLBACKS) maps a model to the
    models to try, in order, when it cannot answer. A chain is not followed transitively: the
    chain of a fallback model is for the requests that ask for that model.
    """

    def __init__(
        self,
        available: Iterable[str],
        routes: Mapping[str, Route] | None = None,
        prefixes: Iterable[tuple[str, str]] = DEFAULT_PREFIXES,
        fallbacks: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self._available = frozenset(available)
        self._routes = dict(routes or {})
        self._prefixes = tuple(prefixes)
        self._fallbacks = {
            model: tuple(dict.fromkeys(chain)) for model, chain in (fallbacks or {}).items()
        }
        self._check_fallbacks()

    def route(self, model: str) -> Route:
        if "*" in model:
            raise UnknownModel(
                model,
                "a pattern of model names, not a model: name one (GET /v1/models lists them)",
                self.routable(),
            )
        route = self._known(model)
        if route is None:
            raise UnknownModel(model, "no provider serves this model", self.routable())
        if route.provider not in self._available:
            raise UnknownModel(
                model,
                f"it is served by {route.provider}, which has no API keys configured",
                self.routable(),
            )
        return route

    def targets(self, model: str) -> tuple[Target, ...]:
        """The models that may answer a request for `model`, in order: itself, then its
        fallbacks; those served by a provider without keys are left out. Raises UnknownModel
        (saying why `model` is not routable) when none is left."""
        chain = (model, *self._fallbacks.get(model, ()))
        found = tuple(Target(m, r) for m in chain if (r := self._usable(m)) is not None)
        if not found or "*" in model:
            self.route(model)  # raises the reason
        return found

    def left_out(self) -> tuple[tuple[str, str, str], ...]:
        """(model, fallback, provider) for each fallback left out of a chain because its provider
        has no API keys; (model, model, provider) when the chain's own model is."""
        return tuple(
            (model, member, route.provider)
            for model, chain in self._fallbacks.items()
            for member in (model, *chain)
            if (route := self._known(member)) is not None and route.provider not in self._available
        )

    def fallback_models(self) -> frozenset[str]:
        return frozenset(m for model, chain in self._fallbacks.items() for m in (model, *chain))

    def routable(self) -> tuple[str, ...]:
        """What a client may ask for, as a person reads it: names, then name patterns."""
        patterns = [f"{prefix}*" for prefix, p in self._prefixes if p in self._available]
        return tuple(sorted(self.named()) + patterns)

    def named(self) -> dict[str, str]:
        """Every model configured by name (MODEL_ROUTES, MODEL_FALLBACKS) that is answered ->
        the provider that serves it (a model without keys of its own whose fallbacks answer:
        the first fallback's)."""
        named: dict[str, str] = {}
        for model in sorted({*self._routes, *self.fallback_models()}):
            provider = self.provider_of(model)
            if provider is not None:
                named[model] = provider
        return named

    def provider_of(self, model: str) -> str | None:
        """The provider a request for `model` goes to first; None when nothing answers it."""
        if "*" in model:
            return None
        chain = (model, *self._fallbacks.get(model, ()))
        return next((r.provider for m in chain if (r := self._usable(m)) is not None), None)

    def _known(self, model: str) -> Route | None:
        """The route of `model`, whether its provider has keys or not; None: no provider."""
        route = self._routes.get(model)
        if route is not None:
            return route
        provider = next((p for prefix, p in self._prefixes if model.startswith(prefix)), None)
        return Route(provider, model) if provider is not None else None

    def _usable(self, model: str) -> Route | None:
        route = self._known(model)
        return route if route is not None and route.provider in self._available else None

    def _check_fallbacks(self) -> None:
        for model, chain in self._fallbacks.items():
            if not chain:
                raise ValueError(f"{model}= names no fallback model")
            if model in chain:
                raise ValueError(f"{model}'s chain names {model} itself")
            for member in (model, *chain):
                if self._known(member) is None:
                    raise ValueError(
                        f"{member} (in {model}'s chain) routes nowhere: no provider serves it "
                        "by name; give it a MODEL_ROUTES entry or use a name such as gpt-* or "
                        "gemini-*"
                    )
