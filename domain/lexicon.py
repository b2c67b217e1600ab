"""The English words the same-question judge knows: which words exist (so that a word that does
not may be a typo of one that does), how common each is, and British spellings with their
American form. Pure data and lookups; the lists themselves are loaded by an adapter.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

_LETTERS = "abcdefghijklmnopqrstuvwxyz"
MIN_TYPO_LENGTH = 4


@dataclass(frozen=True, slots=True)
class Lexicon:
    frequencies: Mapping[str, int] = field(default_factory=dict)  # known word -> how common
    spellings: Mapping[str, str] = field(default_factory=dict)  # British -> American

    def spelling(self, word: str) -> str:
        return self.spellings.get(word, word)

    def known(self, word: str) -> bool:
        """A word of the list, or a singular the judge made from one ("mondays" -> "monday")."""
        return word in self.frequencies or word + "s" in self.frequencies

    def may_be_typo(self, word: str) -> bool:
        """Only an unknown word of letters is read as a typo: a known word is never a typo of
        another (debt/debit, form/from, quite/quiet), nor is a number or an identifier."""
        return (
            bool(self.frequencies)
            and len(word) >= MIN_TYPO_LENGTH
            and word.isascii()
            and word.isalpha()
            and not self.known(word)
        )

    def typo_of(self, typo: str, word: str) -> bool:
        """`typo` (an unknown word) is `word` (a known one) mistyped: same first letter, and an
        edit distance of at most 1 for a word of 4-7 letters, 2 from 8 (a transposition counts
        1). Misspellings rarely change the first letter, while a brand one letter from a word
        often does (Gmail/email)."""
        if len(word) < MIN_TYPO_LENGTH or typo[0] != word[0] or not self.known(word):
            return False
        limit = 1 if len(word) <= 7 else 2
        return abs(len(typo) - len(word)) <= limit and distance(typo, word, limit) <= limit

    def correction(self, word: str) -> str:
        """The known word one edit from `word` (first letter kept) that a typist most likely
        meant, or `word` itself when it is known or has no such neighbour: a letter left out or
        two swapped (the commonest slips) before a letter wrong or one too many, then the
        commonest word."""
        if not self.may_be_typo(word):
            return word
        for edits in _one_edit(word):
            known = [c for c in edits if c in self.frequencies]
            if known:
                return max(known, key=lambda c: (self.frequencies[c], c))
        return word


def distance(a: str, b: str, limit: int) -> int:
    """Damerau-Levenshtein distance (optimal string alignment: an adjacent transposition is one
    edit), or `limit + 1` as soon as it must exceed `limit`."""
    previous2: list[int] = []
    previous = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        current = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = a[i - 1] != b[j - 1]
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                current[j] = min(current[j], previous2[j - 2] + 1)
        if min(current) > limit:
            return limit + 1
        previous2, previous = previous, current
    return previous[-1]


def _one_edit(word: str) -> tuple[set[str], set[str]]:
    """The strings one edit from `word` that keep its first letter: first those that undo a
    letter left out or two letters swapped, then those that undo a wrong or an extra letter."""
    head, tail = word[0], word[1:]
    splits = [(tail[:i], tail[i:]) for i in range(len(tail) + 1)]
    likely = {head + left + c + right for left, right in splits for c in _LETTERS}
    likely |= {head + left + right[1] + right[0] + right[2:] for left, right in splits
               if len(right) > 1}  # fmt: skip
    other = {head + left + c + right[1:] for left, right in splits if right for c in _LETTERS}
    other |= {head + left + right[1:] for left, right in splits if right}
    return likely, other
