"""Completion <-> bytes for the response stores: versioned JSON.

`decode` never raises: bytes that are not a well-formed entry of a version this code knows read as
`None` (a cache miss), so a corrupt entry, or one written by a newer release during a rolling
upgrade, costs one upstream call instead of a failed request.
"""

from __future__ import annotations

import json
from typing import Any

from domain.model import Completion, FinishReason, Usage

VERSION = 1


def encode(completion: Completion) -> bytes:
    entry = {
        "v": VERSION,
        "content": completion.content,
        "model": completion.model,
        "provider": completion.provider,
        "finish_reason": completion.finish_reason.value,
        "usage": {
            "input_tokens": completion.usage.input_tokens,
            "output_tokens": completion.usage.output_tokens,
        },
    }
    return json.dumps(entry, ensure_ascii=False, separators=(",", ":")).encode()


def decode(data: bytes | str) -> Completion | None:
    try:
        entry = json.loads(data)
    except (ValueError, TypeError, RecursionError):  # undecodable UTF-8 or JSON, absurd nesting
        return None
    if not isinstance(entry, dict) or entry.get("v") != VERSION:
        return None
    try:
        return _completion(entry)
    except (KeyError, ValueError, TypeError):
        return None


def _completion(entry: dict[str, Any]) -> Completion:
    usage = entry["usage"]
    if not isinstance(usage, dict):
        raise TypeError("usage")
    return Completion(
        content=_str(entry["content"]),
        model=_str(entry["model"]),
        provider=_str(entry["provider"]),
        finish_reason=FinishReason(entry["finish_reason"]),
        usage=Usage(_count(usage["input_tokens"]), _count(usage["output_tokens"])),
    )


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(type(value).__name__)
    return value


def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(repr(value))
    return value
