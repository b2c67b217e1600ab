"""Per-provider API keys: round-robin over usable keys, cooldown on 429, disabled on 401/403."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from domain.errors import NoUsableKey


@dataclass(frozen=True, slots=True)
class ApiKey:
    """An API key: never in a repr; outside the pool it is named by its fingerprint."""

    value: str = field(repr=False)
    fingerprint: str = field(init=False)

    def __post_init__(self) -> None:
        if not self.value or self.value != self.value.strip():
            raise ValueError("an API key must be non-empty and have no surrounding whitespace")
        digest = hashlib.sha256(self.value.encode()).hexdigest()[:8]
        object.__setattr__(self, "fingerprint", f"key-{digest}")

    def __str__(self) -> str:
        return self.fingerprint


class KeyPool:
    def __init__(self, provider: str, keys: list[ApiKey], default_cooldown: float) -> None:
        if len({k.value for k in keys}) != len(keys):
            raise ValueError(f"{provider}: the same API key is configured twice")
        self.provider = provider
        self._keys = list(keys)
        self._default_cooldown = default_cooldown
        self._cooldown_until: dict[str, float] = {}
        self._disabled: set[str] = set()
        self._next = 0

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def keys(self) -> tuple[ApiKey, ...]:
        return tuple(self._keys)

    def is_usable(self, key: ApiKey, now: float) -> bool:
        return (
            key.fingerprint not in self._disabled
            and self._cooldown_until.get(key.fingerprint, now) <= now
        )

    def usable(self, now: float) -> list[ApiKey]:
        return [k for k in self._keys if self.is_usable(k, now)]

    def acquire(self, now: float) -> ApiKey:
        """The next usable key after the last one handed out; else NoUsableKey (earliest reset)."""
        n = len(self._keys)
        for step in range(n):
            key = self._keys[(self._next + step) % n]
            if self.is_usable(key, now):
                self._next = (self._next + step + 1) % n
                return key
        raise NoUsableKey(self.provider, self.earliest_reset(now))

    def earliest_reset(self, now: float) -> float | None:
        """Seconds until a key frees up; None when every key is disabled (or there are none)."""
        resets = [
            until - now
            for fp, until in self._cooldown_until.items()
            if fp not in self._disabled and until > now
        ]
        return max(0.0, min(resets)) if resets else None

    def cool_down(self, key: ApiKey, now: float, retry_after: float | None) -> float:
        """Rests the key until the provider's reset (or the default); returns when it comes back."""
        seconds = self._default_cooldown if retry_after is None else max(0.0, retry_after)
        until = now + seconds
        current = self._cooldown_until.get(key.fingerprint, now)
        self._cooldown_until[key.fingerprint] = max(current, until)
        return self._cooldown_until[key.fingerprint]

    def disable(self, key: ApiKey) -> None:
        self._disabled.add(key.fingerprint)

    def merge(self, cooling: Mapping[str, float], disabled: Iterable[str], now: float) -> None:
        """What other processes saw: `cooling` maps fingerprints to seconds left in their
        cooldown, `disabled` names rejected keys. A key this pool does not hold is ignored; a
        cooldown only ever gets longer here."""
        by_fingerprint = {k.fingerprint: k for k in self._keys}
        for fingerprint, seconds in cooling.items():
            key = by_fingerprint.get(fingerprint)
            if key is not None:
                self.cool_down(key, now, seconds)
        self._disabled.update(fp for fp in disabled if fp in by_fingerprint)

    def cooling_down(self, now: float) -> int:
        return sum(
            1
            for k in self._keys
            if k.fingerprint not in self._disabled
            and self._cooldown_until.get(k.fingerprint, now) > now
        )

    def disabled(self) -> int:
        return len(self._disabled)
