"""Durations in Go's `time.ParseDuration` syntax, as the predecessor's settings and OpenAI's
`x-ratelimit-reset-*` headers write them."""

from __future__ import annotations

import re

_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_SECONDS = {
    "ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0,
}  # fmt: skip


def parse_duration(text: str) -> float:
    """Seconds from `1h`, `30s`, `500ms`, `6m0s`, `1h2m3.5s`; a bare number is seconds."""
    text = text.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if seconds >= 0:
            return seconds
        raise ValueError(f"{text!r} is negative")
    pos, total = 0, 0.0
    while pos < len(text):
        part = _PART.match(text, pos)
        if part is None:
            break
        total += float(part.group(1)) * _SECONDS[part.group(2)]
        pos = part.end()
    if not text or pos < len(text):
        raise ValueError(f"{text!r} is not a duration; use Go syntax: 30s, 500ms, 1h, 1m30s")
    return total
