"""What may be answered from the cache: scopes, keys, and the guard cosine similarity needs.

Cosine similarity of sentence embeddings cannot tell "100 USD to EUR" from "100 EUR to USD", or
"What is 2+2?" from "What is 2+3?", or a question from its negation. Two prompts are only
interchangeable when their numbers and identifiers appear in the same order and they negate
the same way.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections import Counter
from dataclasses import dataclass

from domain.model import InferenceRequest

_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-']*[A-Za-z0-9_]|[A-Za-z_]")
_QUOTED = re.compile(r"`([^`]+)`|\"([^\"]+)\"")
_NEGATIONS = frozenset(
    {
        "not", "no", "never", "none", "nothing", "nobody", "nowhere", "neither", "nor",
        "without", "cannot", "cant", "dont", "doesnt", "didnt", "isnt", "arent", "wasnt",
        "werent", "wont", "wouldnt", "shouldnt", "couldnt", "hasnt", "havent", "hadnt",
        "except", "exclude", "excluding",
    }
)  # fmt: skip
_NAMESPACE = uuid.UUID("6f1c7e4e-2f8b-4c83-9d55-0b1a3f2e9a10")


@dataclass(frozen=True, slots=True)
class Signature:
    """The parts of a prompt that embeddings blur: ordered numbers and identifiers, negations."""

    tokens: tuple[str, ...]
    negations: tuple[tuple[str, int], ...]

    @classmethod
    def of(cls, text: str) -> Signature:
        found: list[tuple[int, str]] = [(m.start(), m.group()) for m in _NUMBER.finditer(text)]
        negations: Counter[str] = Counter()
        for match in _WORD.finditer(text):
            word = match.group()
            bare = word.lower().replace("'", "")
            if bare in _NEGATIONS:
                negations[bare] += 1
            elif _is_identifier(word):
                found.append((match.start(), _strip_possessive(word).lower()))
        for match in _QUOTED.finditer(text):
            found.append((match.start(), (match.group(1) or match.group(2)).strip().lower()))
        tokens = tuple(token for _, token in sorted(found))
        return cls(tokens, tuple(sorted(negations.items())))

    def matches(self, other: Signature) -> bool:
        return self.tokens == other.tokens and self.negations == other.negations


def _strip_possessive(word: str) -> str:
    return word[:-2] if word.lower().endswith("'s") else word


def _is_identifier(word: str) -> bool:
    """Names a paraphrase keeps verbatim: with digits, snake_case, dotted.names, ALLCAPS
    (two letters or more), camelCase."""
    core = _strip_possessive(word)
    if any(c.isdigit() for c in core) or "_" in core or "." in core.strip("."):
        return True
    letters = [c for c in core if c.isalpha()]
    if len(letters) >= 2 and all(c.isupper() for c in letters):
        return True
    return any(c.isupper() for c in core[1:]) and any(c.islower() for c in core)


def interchangeable(a: str, b: str) -> bool:
    return Signature.of(a).matches(Signature.of(b)) and not _reordered(a, b)


def _reordered(a: str, b: str) -> bool:
    """The same words in another order ("10 km to miles" / "10 miles to km", "dog bites man" /
    "man bites dog"): embeddings barely see order, meaning often hinges on it."""
    words_a, words_b = _words(a), _words(b)
    return words_a != words_b and sorted(words_a) == sorted(words_b)


def _words(text: str) -> list[str]:
    return [match.group().lower() for match in _WORD.finditer(text)]


def cache_scope(request: InferenceRequest, provider: str, embedder: str) -> str:
    """The hard filter of a cache entry: everything but the last user turn that changes the
    answer (provider, model, tenant, system prompt, earlier turns, generation parameters) and
    the embedder whose vectors are compared."""
    context = [(m.role.value, m.content) for m in request.messages[:-1]]
    material = json.dumps(
        [provider, request.model, request.tenant, context, request.temperature, request.max_tokens,
         embedder],
        ensure_ascii=False,
    )  # fmt: skip
    return hashlib.sha256(material.encode()).hexdigest()


def entry_key(scope: str, prompt: str) -> str:
    """The exact-tier key: the scope and the last user turn, whitespace-normalised."""
    normalised = " ".join(prompt.split())
    return hashlib.sha256(f"{scope}\n{normalised}".encode()).hexdigest()


def point_id(key: str) -> str:
    """A UUID for the vector index, derived from the entry key (re-stores overwrite)."""
    return str(uuid.uuid5(_NAMESPACE, key))
