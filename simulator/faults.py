"""Fault specs: parsing and per-request resolution (pure, no I/O).

Grammar (whitespace around items is ignored)::

    spec     := item ("," item)*
    item     := name [":" arg] ["*" count] ["%" percent] ["@" target]
    name     := 4xx/5xx status | quota | badkey | reset | malformed | truncate | stall
              | midstream | html | empty | garbage | delay | slow | words | tokens
    target   := chat | embed | openai | gemini

``*N`` fires the item for the first N matching requests only, ``%P`` with probability P %,
``@target`` only on generation (chat) or embedding (embed) endpoints, or one provider.
Modifiers (delay, slow, words, tokens) always combine; of the terminal faults the first that fires
wins.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

MARKER_RE = re.compile(r"\[\[sim:([^\[\]]*)\]\]")

_ITEM_RE = re.compile(
    r"^(?P<name>[a-z_]+|[45]\d\d)"
    r"(?::(?P<arg>\d+(?:\.\d+)?))?"
    r"(?:\*(?P<limit>\d+))?"
    r"(?:%(?P<percent>\d+(?:\.\d+)?))?"
    r"(?:@(?P<target>[a-z]+))?$"
)

#: Endpoint families an item can be restricted to with ``@target``.
TARGETS = frozenset({"chat", "embed", "openai", "gemini", "anthropic"})

#: Terminal faults besides plain status codes.
TERMINAL_NAMES = frozenset(
    {"quota", "badkey", "reset", "malformed", "truncate", "stall", "midstream"}
    | {"html", "empty", "garbage"}
)
#: Faults that answer 200 with a body that is not the API's (see ``body_fault``).
BODY_NAMES = frozenset({"html", "empty", "garbage"})
#: Modifiers: they change latency or length and never end the request by themselves.
MODIFIER_NAMES = frozenset({"delay", "slow", "words", "tokens"})
#: Faults whose ``:N`` argument counts stream content events delivered before the fault.
STREAM_POSITION_NAMES = frozenset({"malformed", "truncate", "stall", "midstream"})


class FaultSpecError(ValueError):
    """A fault spec that does not follow the grammar."""


@dataclass(frozen=True, slots=True)
class FaultItem:
    """One parsed item of a fault spec."""

    text: str
    name: str
    status: int | None = None
    arg: float | None = None
    limit: int | None = None
    percent: float | None = None
    target: str | None = None

    @property
    def is_modifier(self) -> bool:
        return self.name in MODIFIER_NAMES

    @property
    def label(self) -> str:
        """Short label for stats: the status code or the fault name."""
        return str(self.status) if self.status is not None else self.name


def parse_fault_item(text: str) -> FaultItem:
    match = _ITEM_RE.match(text)
    if match is None:
        raise FaultSpecError(f"invalid fault item {text!r}")
    name = match["name"]
    arg = float(match["arg"]) if match["arg"] is not None else None
    limit = int(match["limit"]) if match["limit"] is not None else None
    percent = float(match["percent"]) if match["percent"] is not None else None
    target = match["target"]
    if target is not None and target not in TARGETS:
        raise FaultSpecError(f"{text!r}: target must be one of {', '.join(sorted(TARGETS))}")
    if percent is not None and percent > 100:
        raise FaultSpecError(f"{text!r}: probability must be <= 100")
    status: int | None = None
    if name.isdigit():
        status = int(name)
        if arg is not None and status != 429:
            raise FaultSpecError(f"{text!r}: only 429 takes an argument (retry delay seconds)")
        name = "status"
    elif name in MODIFIER_NAMES:
        if arg is None:
            raise FaultSpecError(f"{text!r}: {name} needs an argument, e.g. {name}:100")
        if name == "words" and (arg < 1 or arg != int(arg)):
            raise FaultSpecError(f"{text!r}: words needs a whole number >= 1")
        if name == "tokens" and arg != int(arg):
            raise FaultSpecError(f"{text!r}: tokens needs a whole number")
    elif name in STREAM_POSITION_NAMES:
        if arg is not None and arg != int(arg):
            raise FaultSpecError(f"{text!r}: {name} takes a whole number of chunks")
    elif name in TERMINAL_NAMES:
        if arg is not None:
            raise FaultSpecError(f"{text!r}: {name} takes no argument")
    else:
        known = ", ".join(sorted(TERMINAL_NAMES | MODIFIER_NAMES))
        raise FaultSpecError(f"unknown fault {name!r} (use a 4xx/5xx status or one of {known})")
    return FaultItem(
        text=text,
        name=name,
        status=status,
        arg=arg,
        limit=limit,
        percent=percent,
        target=target,
    )


def parse_fault_spec(spec: str) -> tuple[FaultItem, ...]:
    """Parse a comma-separated fault spec; an empty or blank spec has no items."""
    items = [part.strip() for part in spec.split(",")]
    return tuple(parse_fault_item(item.lower()) for item in items if item)


def find_markers(texts: Iterable[str]) -> tuple[str, ...]:
    """The ``[[sim:...]]`` specs found in the given texts, in order."""
    return tuple(m.group(1) for text in texts for m in MARKER_RE.finditer(text))


def strip_markers(text: str) -> str:
    """The text without its ``[[sim:...]]`` markers (and without the space they leave)."""
    return " ".join(MARKER_RE.sub(" ", text).split()) if "[[sim:" in text else text


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """What to do with one request after its fault specs were resolved."""

    terminal: FaultItem | None = None
    extra_delay_s: float = 0.0
    chunk_delay_s: float | None = None
    words: int | None = None
    prompt_tokens: int | None = None
    fired: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class FaultSource:
    """Items from one origin: ``run`` (config), ``header`` or ``prompt``.

    ``scope`` keys the ``*N`` counters: the same item text in the same scope shares one
    counter (the conversation digest for per-request sources, so a retry of the same
    request counts against the same budget).
    """

    origin: str
    items: tuple[FaultItem, ...]
    scope: str = ""


class FaultResolver:
    """Turns fault sources into a plan; keeps the ``*N`` counters."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._counts: Counter[tuple[str, str, str]] = Counter()

    def reset(self) -> None:
        self._counts.clear()

    def _fires(self, source: FaultSource, item: FaultItem) -> bool:
        if item.percent is not None and not self._rng.random() * 100 < item.percent:
            return False
        if item.limit is not None:
            key = (source.origin, item.text, source.scope)
            if self._counts[key] >= item.limit:
                return False
            self._counts[key] += 1
        return True

    def resolve(
        self, sources: Sequence[FaultSource], tags: frozenset[str] = frozenset()
    ) -> FaultPlan:
        """The plan for a request on an endpoint described by ``tags`` (e.g. chat, openai)."""
        terminal: FaultItem | None = None
        delay = 0.0
        slow: float | None = None
        words: int | None = None
        prompt_tokens: int | None = None
        fired: list[str] = []
        for source in sources:
            for item in source.items:
                if not item.is_modifier and terminal is not None:
                    continue  # a terminal fault already won; leave the others' counters alone
                if item.target is not None and item.target not in tags:
                    continue
                if not self._fires(source, item):
                    continue
                fired.append(item.text)
                if item.name == "delay":
                    delay += (item.arg or 0.0) / 1000.0
                elif item.name == "slow":
                    slow = (item.arg or 0.0) / 1000.0
                elif item.name == "words":
                    words = int(item.arg or 1)
                elif item.name == "tokens":
                    prompt_tokens = int(item.arg or 0)
                else:
                    terminal = item
        return FaultPlan(
            terminal=terminal,
            extra_delay_s=delay,
            chunk_delay_s=slow,
            words=words,
            prompt_tokens=prompt_tokens,
            fired=tuple(fired),
        )
