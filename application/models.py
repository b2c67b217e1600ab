"""Which models a client may name (GET /v1/models): never patterns such as `gpt-*`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from application.ports import Clock, ModelInfo
from application.resilience import Upstream
from domain.errors import ProxyError
from domain.routing import ModelRouter

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ListedModel:
    id: str
    provider: str
    created: int | None = None


@dataclass(slots=True)
class _Listing:
    models: tuple[ModelInfo, ...] | None  # None: the provider did not answer
    at: float


class ModelCatalog:
    """The models configured by name (MODEL_ROUTES, MODEL_FALLBACKS), then each provider's own
    list, asked with one of its keys and kept for `ttl` seconds (`retry` after a failure),
    filtered to the models the router sends to that provider. A provider that does not answer
    within `timeout` lists nothing: its models still route by name prefix."""

    def __init__(
        self,
        router: ModelRouter,
        upstreams: Mapping[str, Upstream],
        clock: Clock,
        ttl: float = 600.0,
        timeout: float = 5.0,
        retry: float = 30.0,
    ) -> None:
        self._router, self._upstreams, self._clock = router, upstreams, clock
        self._ttl, self._timeout, self._retry = ttl, timeout, retry
        self._listings: dict[str, _Listing] = {}
        self._lock = asyncio.Lock()

    async def models(self) -> list[ListedModel]:
        listed = {m: ListedModel(m, p) for m, p in self._router.named().items()}
        for provider, found in (await self._listed()).items():
            for info in found or ():
                if info.id not in listed and self._router.provider_of(info.id) == provider:
                    listed[info.id] = ListedModel(info.id, provider, info.created)
        return sorted(listed.values(), key=lambda m: m.id)

    async def find(self, model: str) -> ListedModel | None:
        """`model` if a client may ask for it: listed, or routed by name to a provider whose
        own list is unknown (it did not answer)."""
        provider = self._router.provider_of(model)
        if provider is None:
            return None
        found = next((m for m in await self.models() if m.id == model), None)
        if found is not None:
            return found
        if (await self._listed()).get(provider) is None:
            return ListedModel(model, provider)
        return None

    async def _listed(self) -> dict[str, tuple[ModelInfo, ...] | None]:
        async with self._lock:  # one refresh at a time; the others read its result
            now = self._clock.now()
            stale = [
                name
                for name in self._upstreams
                if (listing := self._listings.get(name)) is None
                or now - listing.at >= (self._ttl if listing.models is not None else self._retry)
            ]
            fetched = await asyncio.gather(*(self._fetch(name) for name in stale))
            for name, models in zip(stale, fetched, strict=True):
                self._listings[name] = _Listing(models, now)
        return {name: listing.models for name, listing in self._listings.items()}

    async def _fetch(self, name: str) -> tuple[ModelInfo, ...] | None:
        upstream = self._upstreams[name]
        try:
            key = upstream.keys.acquire(self._clock.now())
            async with asyncio.timeout(self._timeout):
                return tuple(await upstream.provider.models(key))
        except (ProxyError, TimeoutError) as error:
            log.warning("%s model list unavailable: %s", name, type(error).__name__)
            return None
