"""The word lists the judge reads with: edit distance, what may be a typo, the likeliest fix."""

from __future__ import annotations

import pytest

from adapters.outbound.lexicon import english_lexicon
from domain.lexicon import Lexicon, distance

WORDS = Lexicon({"change": 50, "address": 40, "dress": 90, "damaged": 5, "damned": 30})


@pytest.mark.parametrize(
    ("a", "b", "edits"),
    [("change", "chnage", 1), ("address", "adress", 1), ("kitten", "sitting", 3),
     ("prescription", "perscription", 1), ("ab", "ba", 1), ("", "abc", 3)],
)  # fmt: skip
def test_damerau_distance_counts_a_transposition_once(a: str, b: str, edits: int) -> None:
    assert distance(a, b, 5) == edits
    assert distance(a, b, edits - 1) == edits  # past the limit: limit + 1


def test_only_an_unknown_word_of_four_letters_or_more_may_be_a_typo() -> None:
    assert WORDS.may_be_typo("chnage")
    assert not WORDS.may_be_typo("change")  # known
    assert not WORDS.may_be_typo("chn")  # too short
    assert not WORDS.may_be_typo("ch4nge")  # not letters
    assert not Lexicon().may_be_typo("chnage")  # no word list: no typos


def test_a_typo_keeps_the_first_letter_and_the_edit_limit_grows_with_length() -> None:
    assert WORDS.typo_of("adress", "address")
    assert not WORDS.typo_of("edress", "address")  # first letter
    assert not WORDS.typo_of("adrss", "address")  # 2 edits on 7 letters
    assert not WORDS.typo_of("chnage", "chnages")  # the other word is not known either


def test_the_fix_prefers_a_letter_left_out_then_the_commonest_word() -> None:
    assert WORDS.correction("damged") == "damaged"  # not the commoner "damned" (a wrong letter)
    assert WORDS.correction("adress") == "address"
    assert WORDS.correction("chnage") == "change"
    assert WORDS.correction("zzzzzz") == "zzzzzz"


def test_the_shipped_lists_know_both_spellings_and_not_common_typos() -> None:
    lexicon = english_lexicon()
    assert lexicon.spelling("colour") == "color"
    assert lexicon.spelling("tonne") == "tonne"  # not a US ton
    for word in ("colour", "color", "debit", "quiet", "dessert", "monday", "iphone"):
        assert lexicon.known(word), word
    for typo in ("chnage", "adress", "acount", "perscription", "recieve", "seperate"):
        assert lexicon.may_be_typo(typo), typo
