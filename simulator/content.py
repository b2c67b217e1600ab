"""Deterministic content: answers, token counts, embeddings and key fingerprints (pure)."""

from __future__ import annotations

import hashlib
import math
import random
import re
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache

# fmt: off
_VOCABULARY = (
    "amber", "anchor", "beacon", "bridge", "cascade", "cedar", "circuit", "cobalt",
    "compass", "copper", "crystal", "delta", "ember", "falcon", "fjord", "garnet",
    "glacier", "harbor", "horizon", "indigo", "island", "jasper", "kernel", "lantern",
    "lattice", "meadow", "meridian", "nebula", "nimbus", "oasis", "orbit", "pebble",
    "prairie", "quartz", "quiver", "radiant", "ripple", "saffron", "signal", "silver",
    "summit", "tandem", "thicket", "timber", "tundra", "umber", "vector", "velvet",
    "vertex", "willow", "window", "yonder", "zenith", "zephyr", "quietly", "swiftly",
    "gently", "boldly", "softly", "brightly", "calmly", "steadily", "plainly", "warmly",
)
# fmt: on

_WORD_RE = re.compile(r"\w+")


def key_fingerprint(key: str) -> str:
    """The simulator's fingerprint of an API key: first 12 hex digits of its sha256."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:12]


def mask_key(key: str) -> str:
    """Mask a key the way OpenAI echoes it in a 401 (only long keys keep 7 characters)."""
    if len(key) < 16:
        return "*" * len(key)
    return f"{key[:3]}{'*' * (len(key) - 7)}{key[-4:]}"


def count_tokens(text: str) -> int:
    """The simulator's tokenizer: whitespace-separated words."""
    return len(text.split())


def conversation_digest(model: str, turns: Sequence[tuple[str, str]]) -> bytes:
    """A digest of the model and every (role, text) turn, system instruction included."""
    h = hashlib.sha256()
    h.update(model.encode("utf-8"))
    for role, text in turns:
        h.update(b"\x1e")
        h.update(role.encode("utf-8"))
        h.update(b"\x1f")
        h.update(text.encode("utf-8"))
    return h.digest()


def _byte_stream(seed: bytes) -> Iterator[int]:
    counter = 0
    while True:
        yield from hashlib.sha256(seed + counter.to_bytes(8, "big")).digest()
        counter += 1


@dataclass(frozen=True, slots=True)
class Answer:
    """A generated answer, already cut to the output limit."""

    words: tuple[str, ...]
    truncated: bool
    prompt_tokens: int

    @property
    def text(self) -> str:
        return " ".join(self.words)

    @property
    def completion_tokens(self) -> int:
        return len(self.words)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def chunks(self, words_per_chunk: int) -> list[str]:
        """Stream deltas whose concatenation is exactly ``text``."""
        out: list[str] = []
        for start in range(0, len(self.words), words_per_chunk):
            piece = " ".join(self.words[start : start + words_per_chunk])
            out.append(piece if start == 0 else " " + piece)
        return out


def generate_answer(
    digest: bytes,
    last_user_text: str,
    *,
    words: int,
    echo_words: int,
    max_tokens: int | None,
    prompt_tokens: int,
) -> Answer:
    """A fixed answer for a conversation digest: a tag, an echo of the question, filler.

    ``words`` is the natural length; when ``max_tokens`` is smaller the answer is cut and
    marked truncated (finish reason ``length`` / ``MAX_TOKENS``).
    """
    parts = [f"sim-{digest.hex()[:8]}:"]
    parts.extend(last_user_text.split()[:echo_words])
    stream = _byte_stream(digest)
    while len(parts) < words:
        index = (next(stream) << 8 | next(stream)) % len(_VOCABULARY)
        parts.append(_VOCABULARY[index])
    parts = parts[:words]
    parts[-1] = parts[-1] + "."
    truncated = max_tokens is not None and max_tokens < len(parts)
    if truncated and max_tokens is not None:
        parts = parts[:max_tokens]
    return Answer(words=tuple(parts), truncated=truncated, prompt_tokens=prompt_tokens)


@lru_cache(maxsize=2048)
def _seeded_vector(salt: str, token: str, dim: int) -> array[float]:
    seed = int.from_bytes(hashlib.sha256(f"{salt}\x1f{token}".encode()).digest(), "big")
    rng = random.Random(seed)  # random() is stable across Python versions for a given seed
    return array("d", (rng.random() * 2.0 - 1.0 for _ in range(dim)))


def embed_text(text: str, *, model: str, dim: int, mode: str = "words") -> list[float]:
    """A deterministic unit vector for a text.

    ``words`` mode sums one pseudo-random vector per lower-cased word (bag of words), so
    texts sharing words are close and a reordering ("100 USD to EUR" / "100 EUR to USD")
    gives the same vector. ``hash`` mode gives one unrelated vector per distinct text.
    """
    tokens = [text] if mode == "hash" else (_WORD_RE.findall(text.lower()) or [""])
    acc = [0.0] * dim
    for token in tokens:
        for i, value in enumerate(_seeded_vector(model, token, dim)):
            acc[i] += value
    norm = math.sqrt(math.fsum(v * v for v in acc))
    if norm == 0.0:
        acc = list(_seeded_vector(model, "\x00", dim))
        norm = math.sqrt(math.fsum(v * v for v in acc))
    return [v / norm for v in acc]
