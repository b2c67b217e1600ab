"""Whether a cached prompt asks the same question as a new one: the judge after cosine.

Cosine similarity of sentence embeddings is high for prompts on the same topic, whatever they
ask: "Is the store open on Sundays?" and "…closed on Sundays?", "Word to PDF" and "PDF to
Word", "7am" and "7pm". So a candidate above the threshold is served only when the two prompts,
read as words, differ in nothing that can change the answer:

1. Both are normalised first, so that form does not count: case, punctuation, contractions
   with or without the apostrophe ("can't" = "cant" = "cannot" = "can not"), chat shorthand
   ("r u" = "are you", "ur" = "your"), plurals, number words, a few stock phrasings ("what
   time" = "when", "how to" = "how do I", "the language of the app" = "the app language",
   "have you got" = "do you have"), greetings, thanks and filler at either end ("Hi, quick
   one:", "… Cheers"; not when the question names them: "how do you say thank you"), British
   spellings (colour = color, from the `Lexicon`). A word the `Lexicon`
   does not know may be a typo of a known word on the other side, one or two edits away
   ("chnage" / "change"); a known word is never a typo of another (debt/debit, form/from).
2. Words that only carry the form of a question (articles, auxiliaries, "you", "please",
   "tell", "explain") are set aside. What remains must be the same on both sides, up to a small
   set of synonyms (the only kind of substitution allowed). Any other content word present on
   one side only is a different question: that one rule catches antonyms (open/closed), prefix
   polarity (safe/unsafe), swapped entities (Paris/Rome), scope qualifiers (full-time/part-time),
   times and dates (August/October, weekdays/weekends) without listing them as pairs.
3. Never set aside: negations, numbers (7am/7pm, 2/two), the signs of a formula (5-1 / 5--1,
   (2+3)*4 / 2+3*4, <= / >=; punctuation and emoji in prose are nothing), question words
   (where/when), the prepositions and comparatives that order things (to/from, before/after,
   under/over, within, than), what the auxiliaries mark (did/will, must/have to, and "should"
   opening a yes/no question: "Should I tip?" asks for advice, "Can I tip?" for leave), "or"
   (card and cash / card or cash), "good" and "best" (a good credit score / a credit score),
   and how many: "a" thing is not the same things in the plural ("a child" / "children").
4. Same words, other order: accepted when one block of words moved past at least two others
   ("On my phone, how do I set up voicemail?"), refused when a relation changed side ("Word to
   PDF" / "PDF to Word": what follows "to" differs) or words swapped places ("dog chases cat" /
   "cat chases dog", "EUR USD rate" / "USD EUR rate").
5. Text over several lines (code, YAML, a pasted log) must match line for line, indentation
   included, below its first line: whitespace is meaning there.

It errs towards a miss: a paraphrase with words outside its synonym sets is not served from
the cache, but a different question never is.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from domain.lexicon import Lexicon

# one way to write each: apostrophes, the minus sign, degrees ("20°C" = "20 degrees C")
_ONE_SPELLING = str.maketrans(
    {"\u2019": "'", "\u2018": "'", "`": "'", "\u00b4": "'", "\u2212": "-", "\u00b0": " degree "}
)
_ARROWS = re.compile(r"\s*(?:->|=>|\u2192|\u27f6|\u21d2)\s*")
# Letters and digits of any script (a run of CJK characters is one word); the signs of a
# formula, where punctuation in prose is nothing: a minus next to a number, a bracket or another
# operator (-5 is not 5, 5--1 is not 5-1, x -= 1 is not x = 1; a dash in prose is nothing), "!"
# in "!=" or after a number, a bracket that opens or closes a formula ((2+3)*4 is not 2+3*4);
# then any other symbol, kept when it is one of _SIGNS (below) and dropped otherwise (emoji,
# bullets, a dash, quotes). A dash or two that start a word are an option ("ls -a" is not "ls").
_TOKEN = re.compile(
    r"[^\W_]+(?:'[^\W_]+)?"
    r"|(?<!\S)--?(?=[^\W\d_])"
    r"|-(?=\s*[\d(.=-])|(?<=[\d)])\s*-"
    r"|!(?==)|(?<=\d)!"
    r"|\((?=\s*[-\d(.])|(?<=[\d)])\)"
    r"|[^\w\s!()-]"
)
_NUMBER_PART = re.compile(r"(\d+)([a-z]+)$")

_CONTRACTIONS = {
    "can't": "can not", "cannot": "can not", "won't": "will not", "shan't": "shall not",
    "ain't": "is not", "cant": "can not", "wont": "will not", "dont": "do not",
    "doesnt": "does not", "didnt": "did not", "isnt": "is not", "arent": "are not",
    "wasnt": "was not", "werent": "were not", "hasnt": "has not", "havent": "have not",
    "hadnt": "had not", "shouldnt": "should not", "wouldnt": "would not",
    "couldnt": "could not", "whats": "what is", "hows": "how is", "wheres": "where is",
    "whos": "who is", "thats": "that is", "im": "i am", "ive": "i have", "youre": "you are",
    "what's": "what is", "where's": "where is", "who's": "who is", "how's": "how is",
    "when's": "when is", "why's": "why is", "that's": "that is", "it's": "it is",
    "there's": "there is", "here's": "here is", "he's": "he is", "she's": "she is",
    "let's": "let us", "whens": "when is", "whys": "why is", "theres": "there is",
    "theyre": "they are", "youve": "you have", "weve": "we have", "theyve": "they have",
    "wouldve": "would have", "couldve": "could have", "shouldve": "should have",
    "wanna": "want to", "gonna": "going to",
}  # fmt: skip
# Chat shorthand for "you", "your" and "are": form words, whichever they stand for ("ur" is
# also "you're"). Not a letter of a word or a name: "U-turn", "U.S.", "R packages".
_SHORTHAND = [
    (re.compile(r"(?<![\w'.-])u(?![\w'.-])"), "you"),
    (re.compile(r"(?<![\w'.-])ur(?![\w'.-])"), "your"),
    (re.compile(r"(?<![\w'.-])r(?= (?:u|you|ur|your|we|they|there|these|those)\b)"), "are"),
    (re.compile(r"\b(what|where|when|how|who|why|which) r\b"), r"\1 are"),
]
_ANY_SHORTHAND = re.compile(r"\b(?:u|ur|r)\b")
_SUFFIXES = {"n't": " not", "'re": " are", "'m": " am", "'ve": " have", "'ll": " will",
             "'d": " would", "'s": ""}  # fmt: skip


def _literal(pattern: str) -> str:
    """Text every match of `pattern` contains: its longest run of letters and spaces outside
    any group or class ("" when the pattern is an alternation at its top level). Checking it
    with `in` first spares most prompts most substitutions."""
    depth, runs, run = 0, [], ""
    for i, c in enumerate(pattern):
        quantified = pattern[i + 1 : i + 2] in ("?", "*", "{")
        if c in "([":
            depth += 1
        elif c in ")]":
            depth -= 1
        elif c == "|" and depth == 0:
            return ""
        if (
            depth == 0
            and (c.isalpha() or c == " ")
            and pattern[i - 1 : i] != "\\"
            and not quantified
        ):
            run += c
            continue
        runs.append(run)
        run = ""
    return max([*runs, run], key=len).strip()


_PHRASES = [
    (_literal(p), re.compile(p), r)
    for p, r in (
        (r"\bwhat time\b", "when"),
        (r"\bwhich\b", "what"),
        (r"\bwhom\b", "who"),
        (
            # "best", "easiest", "simplest" ask for a good way; "quickest", "cheapest",
            # "safest" ask for one measure of it and stay content
            r"\bwhat (is|are) (?:the (?:best |easiest |simplest )?|a good )(way|steps) to\b",
            "how do i",
        ),
        (r"\bhow come\b", "why"),
        (r"\bam i allowed to\b", "can i"),
        (r"\bam i able to\b", "can i"),
        # form to the judge already, but the embedder sees them; "may" only where it opens the
        # question: "open in May? We arrive then" keeps its month
        (r"\bcould (i|we)\b", r"can \1"),
        (r"(^|\b(?:what|how|where|when|who|why) )may (i|we)\b", r"\1can \2"),
        (r"\b(?:is|are) (you|we|it|they) able to\b", r"can \1"),
        (r"\bis there (?:a|any) way (?:to|i can)\b", "how do i"),
        (r"\bis it possible to\b", "can i"),
        (r"\bis it possible\b", "can"),
        (r"\bhow can i tell\b", "how do i know"),
        (r"\bwhat is the meaning of\b", "what does mean"),
        (r"\bwhat are the signs\b", "what are the symptoms"),
        (r"\bin order to\b", "to"),
        # "quickly" asks for a short answer only before the verb that asks for it ("can you
        # quickly explain"); elsewhere it asks for a fast way ("cook rice quickly")
        (
            r"\b(?:quickly|briefly) (?=(?:tell|explain|describe|summarize|summarise|show|check)\b)",
            "",
        ),
        (r" or not$", ""),  # "Is the deposit refundable or not?" asks if it is
        (r"\bfor (?:good|ever)\b|\bforever\b", "permanently"),
        (r"\b(?:have|has|had|need|needs|ought) to\b", "must"),
        (r"\b(?:am|is|are) (?:i |we |they |you |it )?required to\b", "must"),
        (r"\b(?:(?:can|could|would) you )?(?:tell|show) me how to\b", "how do i"),
        (r"\bhow to\b", "how do i"),
        (r"\bhow (do|can|would|should) you\b", r"how \1 i"),  # the generic "you"
        (
            r"\b(?:(?:can|could|would) you )?tell me (the|a|an|your|my|some)\b",
            r"what is \1",
        ),
        # "give me the number" and "give me some tips" ask for them; "give me a refund" asks for
        # a refund, not what one is
        (
            r"\b(?:(?:can|could|would) you )?(?:give|show) me (the|your|my|some)\b",
            r"what is \1",
        ),
        (r"\b(tell|give|show|send) me\b", r"\1"),
        (r"\bset up\b", "setup"),
        (r"\b(?:log|sign) (?:in|on)\b|\bsignin\b|\blogon\b", "login"),
        (r"\b(?:log|sign) out\b|\bsignout\b", "logout"),
        (r"\bwi fi\b", "wifi"),
        (r"\be mail\b", "email"),
        (r"\bmoney back\b", "refund"),
        # "reach support" is "contact support", "reach the airport" is getting there
        (
            r"\breach (you|us|someone|somebody|anyone|anybody|support|customer|an agent"
            r"|a person|a human)\b",
            r"contact \1",
        ),
        (r"\bturn on\b", "enable"),
        (r"\bswitch on\b", "enable"),
        (r"\bturn off\b", "disable"),
        (r"\bswitch off\b", "disable"),
        (r"\bcome with\b", "include"),
        (r"\bcheck in\b", "checkin"),
        (r"\bcheck out\b", "checkout"),
        (r"\b(?:have|has) (i|you|we|they) (not )?got\b", r"do \1 \2have"),
        (r"\b(?:have|has) (it|he|she) (not )?got\b", r"does \1 \2have"),
        (r"\b(i|you|we|they|it|he|she) (have|has) got\b", r"\1 \2"),
        (r"\bwaiting (time|list|period)\b", r"wait \1"),
        (r"\b(i|we|to) switch\b(?! (?:on|off)\b)", r"\1 change"),
    )
]

# The form of a question, not its content.
_FORM = frozenset(
    """a an the this that these those it its you your yours is are be been being am do
    does doing done have has had having can could would should may might please kindly
    tell explain describe let know like help assist really actually briefly
    simply possible some any there here so and but if then also still yet about
    regarding exactly quite very much many own of for""".split()  # noqa: SIM905
)
_NEGATIONS = frozenset({"not", "no", "never", "without"})
# What the auxiliaries mark, compared once each: tense ("when did it open" / "when will it
# open") and obligation ("do I have to pay" / "can I pay").
_TENSES = {"did": "(past)", "was": "(past)", "were": "(past)", "will": "(future)",
           "shall": "(future)", "must": "(must)"}  # fmt: skip
# Words that relate the content word after them ("to PDF", "before 9"); like negations, they
# are content words too, never set aside.
_ORDERING = frozenset(
    """to from into onto than over under above below before after within inside outside until
    till since between through via versus vs against per more less most least fewer higher
    lower max min maximum minimum first last earliest latest early late next previous off on
    in out up down by at for of with""".split()  # noqa: SIM905
)  # "of" and "for" are form words, but still relate their objects when on both sides
_NUMBER_WORDS = {
    "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10", "eleven": "11",
    "twelve": "12", "twenty": "20", "thirty": "30", "fifty": "50", "hundred": "100",
    "thousand": "1000", "half": "0.5", "double": "x2", "twice": "x2", "dozen": "12",
}  # fmt: skip
# Substitutions a paraphrase makes. Erring here serves a wrong answer: true synonyms only.
_SYNONYMS = [
    "change update modify edit",
    "buy purchase",
    "fix repair",
    "symptom sign",
    "shipping delivery",
    "make create",
    "see view",
    "sea ocean",
    "mean meaning",
    "cost price",
    "frequently often",
    "setup configure",
    "enable activate",
    "tip advice",
    "recommend suggest",
    "int integer",
    "summary summarize summarise",
    "pick choose select",
    "large big",
    "begin start",
    "photo picture",
    "movie film",
    "problem issue",
    "receive get",
    "delete remove erase",
    "fast quick quickly",
    "fastest quickest",
    "shop store",
    "doctor physician",
    "child kid children",
    "holiday vacation",
    "bill invoice",
    "ok okay",
]
_CANONICAL = {word: group.split()[0] for group in _SYNONYMS for word in group.split()}


# Greetings, thanks, sign-offs and filler at the start or the end of a prompt: not content.
# Only there: in the middle of a question such words may carry it ("please don't ..." keeps its
# "not" in any case). A phrase that hides a negation ("no thanks") is not among them. `[~]` is
# a separator (space or punctuation); some words are filler only when a comma or the like
# follows ("Morning, are you open?" but "morning appointments").
_LEADING_PHRASES = [
    "(?:hi|hello|hey|hiya|howdy|greetings|dear)"
    "(?: there| team| all| everyone| folks| guys| again| support| sir| madam)?",
    "good (?:morning|afternoon|evening|day)(?: team| all| everyone| there)?",
    "(?:(?:morning|afternoon|evening)(?: all| team| everyone)?|sorry|ok|okay|so|right|well|um"
    "|uh|erm|hmm)(?=[~]*[-,!.:;\u2013\u2014])",
    "(?:a |one |just a )?(?:quick|small|simple|short|random|silly) (?:question|one|q)(?: for you)?",
    "(?:sorry if this is|this (?:is|might be|may be)|(?:it's |it is )?probably) a (?:silly|stupid"
    "|dumb|daft|basic) question(?:[~]*but)?",
    "(?:ok|okay) so",
    "one more (?:question|thing)|(?:i have|i've got|i've|got) a (?:quick )?question",
    "(?:can|may) i ask(?: you)?(?: a (?:quick )?question)?",
    "(?:i )?hope you can help(?: me)?|(?:can|could) you help(?: me)?(?: please)?",
    "(?:i was |i am |i'm |am )?(?:just )?(?:wondering|curious)(?: if| whether)?",
    "just (?:checking|asking)(?: if| whether)?",
    "sorry to (?:bother|trouble) you(?:[~]*but)?",
    "excuse me",
    "apologies(?: for the (?:bother|trouble))?",
    "(?:i )?hope (?:you are|you're|all is|this finds you)(?: doing)? well",
    "(?:thanks|thank you)(?: in advance)?(?:[~]*but)?",
    "please|pls|plz",
    "(?:do you|does anyone|any(?:one|body)) know(?: if| whether)?",
    "(?:i would|i'd|i) (?:like|want|wanted) to (?:know|ask)(?: if| whether)?",
    "(?:can|could) you (?:tell me|let me know)(?: if| whether)|please (?:tell me|let me know)"
    "(?: if| whether)?",
    "any ?idea(?: if| whether)?",
]
_TRAILING_PHRASES = [
    "(?:many |big |huge )?thanks(?: a lot| a million| so much| very much| heaps| again| in advance"
    "| guys| team| all| everyone"
    "| for (?:your|the|any) help)?",
    "thank you(?: so much| very much| again| in advance| for (?:your|the|any) help)?",
    "thx|thnx|thanx|tia|ty|ta|cheers(?: mate)?|please|pls|plz|please advise",
    "(?:any help (?:is |would be )?)?(?:much |greatly )?appreciated|appreciate it",
    "(?:kind |best |warm )?regards|best wishes",
    "have a (?:good|nice|great|lovely) (?:day|one|evening|weekend)",
]
_SEP = "-\\s,!.:;\u2013\u2014"
_LEADING = re.compile(("^(?:" + "|".join(_LEADING_PHRASES) + ")[~]+").replace("~", _SEP))
_TRAILING = re.compile(("[~]+(?:" + "|".join(_TRAILING_PHRASES) + ")[~?()]*$").replace("~", _SEP))


def _without_pleasantries(text: str) -> str:
    """`text` (lower case) without the greetings, thanks and filler at its start and end; as it
    is if nothing else would remain."""
    core = text.strip()
    while True:
        shorter = _without_sign_off(_LEADING.sub("", core + " ")).strip()
        if shorter == core:
            break
        core = shorter
    return core if any(c.isalnum() for c in core) else text


def _without_sign_off(text: str) -> str:
    """`text` without the thanks or sign-off at its end, unless a word before it makes it what
    is asked about: "how do you say thank you", "is it rude not to say please", "what is the
    Japanese for thanks", "end an email with kind regards" (no punctuation between)."""
    match = _TRAILING.search(text)
    if match is None:
        return text
    before = text[: match.start()]
    last_word = before.split()[-1] if before.split() else ""
    if last_word in _NAMING and re.match(r"\s+\w", match.group()):
        return text  # only spaces between: the pleasantry is in the sentence
    return before


# Words after which a pleasantry is named, not said: verbs of saying, and the words that put
# it in a sentence ("the word for", "end with").
_NAMING = frozenset(
    """say says said saying write writes wrote writing reply replied respond answer mean means
    word words spell spelt spelled pronounce translate type text sign end start use for of
    with is not as like than""".split()  # noqa: SIM905
)


@dataclass(frozen=True, slots=True)
class Reading:
    """A prompt as the judge reads it: its words in order (normalised, spelling and synonyms
    merged), and the body of a multi-line prompt verbatim."""

    text: str
    words: tuple[str, ...]
    body: tuple[str, ...]
    spelt: tuple[str, ...]  # the words before synonyms were merged (a typo is of one of them)

    @classmethod
    def of(cls, text: str, lexicon: Lexicon) -> Reading:
        head, _, rest = text.strip().partition("\n")
        body = tuple(line.rstrip() for line in rest.split("\n") if line.strip())
        spelt = [lexicon.spelling(w) for w in _words(text if not body else head)]
        words = _genitive_first([_canonical(w) for w in spelt])
        return cls(text, tuple(words), body, tuple(spelt))


def _one_against_many(a: Sequence[str], b: Sequence[str]) -> bool:
    """One side asks about "a" thing, the other about the same things in the plural ("can an
    adult bring a child in free" / "…children…", "a fee for a bag" / "…for bags"): how many
    may be the question. "a savings account" is neither: only the word after "a" counts."""
    one_a, many_a = _numbers(a)
    one_b, many_b = _numbers(b)
    return bool(one_a & many_b or one_b & many_a)


def _numbers(spelt: Sequence[str]) -> tuple[set[str], set[str]]:
    """The words written in the singular in the two words after "a" / "an" ("a checked bag"),
    and those written in the plural outside them, merged as the judge reads them."""
    one, many = set(), set()
    for i, word in enumerate(spelt):
        if word in _FORM or word in _ORDERING:
            continue
        plural = word == "children" or _singular(word) != word
        after_a = any(w in ("a", "an") for w in spelt[max(0, i - 2) : i])
        if after_a and not plural:
            one.add(_canonical(word))
        elif plural and not after_a:
            many.add(_canonical(word))
    return one, many


def _content(words: Sequence[str]) -> list[str]:
    """The content words in order, then the tenses the auxiliaries mark ("when did it open" /
    "when will it open") and the advice "should" asks for, once each."""
    content = [w for w in words if w not in _FORM and w not in _TENSES]
    marks = {_TENSES[w] for w in words if w in _TENSES} | _advice(words)
    return content + sorted(marks)


def _advice(words: Sequence[str]) -> set[str]:
    """ "Should I tip?" asks for advice where "Can I tip?" asks for leave: a "should" with no
    question word before it is content. After one ("what should I do", "how long should I boil
    it") the question word asks, and "should" is form, as "do" is."""
    if "should" not in words:
        return set()
    for i, word in enumerate(words):
        if word == "should" and _QUESTION_WORDS.isdisjoint(words[:i]):
            return {"(should)"}
    return set()


class QuestionJudge:
    """Reads prompts with a `Lexicon` (known words for typos, British spellings). It remembers
    nothing between calls: a reading shared across tenants would make a prompt another tenant
    sent faster to judge (the reason the embedding LRU is per tenant)."""

    def __init__(self, lexicon: Lexicon | None = None) -> None:
        self._lexicon = lexicon or Lexicon()

    def read(self, prompt: str) -> Reading:
        """`prompt` read once, for `embedding_text` and every `same` of one lookup."""
        return Reading.of(prompt, self._lexicon)

    def embedding_text(self, prompt: str | Reading) -> str:
        """What the embedder is given for `prompt`: the words the judge reads, a typo replaced
        by the commonest word one edit away, so that form (case, punctuation, contractions,
        greetings, spelling: "?" alone moves MiniLM's cosine by 0.1) does not move the vector.
        A multi-line prompt is given as it is (its layout is its meaning)."""
        reading = prompt if isinstance(prompt, Reading) else self.read(prompt)
        if reading.body:
            return reading.text
        guessed = [_canonical(self._lexicon.correction(w)) for w in reading.spelt]
        return " ".join(_genitive_first(guessed)) or reading.text

    def same(self, asked: str | Reading, stored: str, similarity: float, threshold: float) -> bool:
        """Whether `stored`'s answer answers `asked`: cosine at least `threshold`, and no
        difference the embedding blurs (see the module docstring)."""
        if similarity < threshold:
            return False
        a = asked if isinstance(asked, Reading) else self.read(asked)
        if a.text == stored:
            return True
        b = self.read(stored)
        if a.body != b.body or not a.words or not b.words:
            return False  # nothing to compare but the bytes (emoji, symbols): those differ
        words_a = self._typos_mended(a.words, b)
        words_b = self._typos_mended(b.words, a)
        content_a, content_b = _content(words_a), _content(words_b)
        if Counter(content_a) != Counter(content_b):
            return False
        if not _same_relations(words_a, words_b) or _one_against_many(a.spelt, b.spelt):
            return False
        # where "not" stands follows the auxiliary ("isn't the tap" / "is the tap not"): its
        # count is compared above, its position is not
        return _one_block_moved(_without(_NEGATIONS, content_a), _without(_NEGATIONS, content_b))

    def _typos_mended(self, words: tuple[str, ...], other: Reading) -> tuple[str, ...]:
        """`words` with each unknown word that is a typo of a word written only in `other`
        replaced by it ("chnage" / "change", "perscription" / "prescription")."""
        only_other = sorted({_singular(w) for w in other.spelt}.difference(words))
        lexicon, mended = self._lexicon, list(words)
        for i, word in enumerate(words):
            if word not in other.words and lexicon.may_be_typo(word):
                typo_of = next((w for w in only_other if lexicon.typo_of(word, w)), None)
                mended[i] = word if typo_of is None else _canonical(typo_of)
        return tuple(mended)


_DETERMINERS = frozenset("the a an this that my your our their its".split())  # noqa: SIM905
_COPULAS = frozenset("is are am be been being was were".split())  # noqa: SIM905


def _genitive_first(words: list[str]) -> list[str]:
    """ "the language of the app" -> "the app language", as "the app's language" and "the app
    language" read: one word on each side of "of" / "for", so the two readings of one phrase
    meet, and "mother of the child" still differs from "child of the mother". A word after "is"
    is not a noun but what is said of one ("which plan is best for a family"): it stays."""
    out = list(words)
    i = 1
    while i < len(out) - 1:
        if out[i] in ("of", "for"):
            j = i + 2 if out[i + 1] in _DETERMINERS and i + 2 < len(out) else i + 1
            x, y = out[i - 1], out[j]
            before = out[i - 2] if i >= 2 else ""
            after = out[j + 1] if j + 1 < len(out) else ""
            single = (not before or (_is_form(before) and before not in _COPULAS)) and (
                not after or _is_form(after)
            )
            if single and not _is_form(x) and not _is_form(y) and y not in _ORDERING:
                out[i - 1 : j + 1] = [y, x]
                continue
        i += 1
    return out


def _is_form(word: str) -> bool:
    """A word that ends a noun phrase: a form word, an ordering word, or a question word (which
    starts the next clause: "For a family of four, which plan ...")."""
    return word in _FORM or word in _ORDERING or word in _QUESTION_WORDS


_QUESTION_WORDS = frozenset("what who whose how why where when".split())  # noqa: SIM905


def _without(words: frozenset[str], sequence: list[str]) -> list[str]:
    return [w for w in sequence if w not in words]


def _words(text: str) -> list[str]:
    text = _ARROWS.sub(
        " to ", _without_pleasantries(_spelt_out(text.translate(_ONE_SPELLING).lower()))
    )
    text = re.sub(r"(?<=[a-z])-(?=[a-z])", " ", text)  # non-refundable, part-time, check-in
    words: list[str] = []
    for token in _TOKEN.findall(text):
        token = token.strip()
        if len(token) == 1 and not token.isalnum() and token not in "-!()" and not _is_sign(token):
            continue
        token = _expand(token)
        words.extend(token.split())
    joined = " ".join(words)
    for literal, pattern, replacement in _PHRASES:
        if literal in joined:
            joined = pattern.sub(replacement, joined)
    out: list[str] = []
    for word in joined.split():
        number = _NUMBER_PART.match(word)
        if number and number.group(2) not in ("st", "nd", "rd", "th"):
            out.extend(number.groups())  # 7am -> 7 am, 30k -> 30 k; 1st stays 1st
        else:
            out.append(_NUMBER_WORDS.get(word, word))
    return out


def _spelt_out(text: str) -> str:
    """`text` with chat shorthand ("r u open", "ur address") in full words."""
    if not _ANY_SHORTHAND.search(text):
        return text  # the common case: nothing to do
    for pattern, replacement in _SHORTHAND:
        text = pattern.sub(replacement, text)
    return text


def _is_sign(char: str) -> bool:
    """A symbol that carries meaning in a question: a mathematical or currency sign (+ = < >,
    the multiplication and division signs, not-equal, square root, $ £ €) or one of ASCII's
    operators; not an emoji, a bullet or a dash."""
    return char in _SIGNS or unicodedata.category(char) in ("Sm", "Sc")


_SIGNS = frozenset("%&*/\\^#@")


def _expand(token: str) -> str:
    if token in _CONTRACTIONS:
        return _CONTRACTIONS[token]
    if "'" not in token:
        return token
    if token in _CONTRACTIONS:
        return _CONTRACTIONS[token]
    for suffix, replacement in _SUFFIXES.items():
        if token.endswith(suffix):
            return token[: -len(suffix)] + replacement
    return token


def _canonical(word: str) -> str:
    if word in _FORM or word in _ORDERING or word in _TENSES:
        return word  # "does" is not the plural of "doe"
    word = _singular(word)
    return _CANONICAL.get(word, word)


def _singular(word: str) -> str:
    """Plural to singular, roughly; never for a word without a vowel before its "s" (an
    acronym: HTTPS is not the plural of HTTP)."""
    if (
        len(word) > 3
        and word.endswith("s")
        and not word.endswith(("ss", "us", "is"))
        and any(c in "aeiouy" for c in word[:-1])
    ):
        return word[:-3] + "y" if word.endswith("ies") else word[:-1]
    return word


def _same_relations(a: Sequence[str], b: Sequence[str]) -> bool:
    """Each ordering word found on both sides relates the same word ("to PDF")."""
    relations_a, relations_b = _relations(a), _relations(b)
    shared = {r for r, _ in relations_a} & {r for r, _ in relations_b}
    return all(
        Counter(x for x in relations_a.elements() if x[0] == r)
        == Counter(x for x in relations_b.elements() if x[0] == r)
        for r in shared
    )


def _relations(words: Sequence[str]) -> Counter[tuple[str, str]]:
    """(ordering word, its object): the next word that is neither a form word nor another
    ordering word ("time off in Workday" relates "in" to "workday", and "off" to nothing)."""
    found: Counter[tuple[str, str]] = Counter()
    for i, word in enumerate(words):
        if word not in _ORDERING:
            continue
        following = next((w for w in words[i + 1 :] if w not in _FORM or w in _ORDERING), "")
        if following and following not in _ORDERING:
            found[(word, following)] += 1
    return found


def _one_block_moved(a: list[str], b: list[str]) -> bool:
    """`b` is `a`, or `a` with one contiguous run of words moved elsewhere, past at least two
    others (two words trading places is a swap: "EUR USD rate" / "USD EUR rate")."""
    if a == b:
        return True
    start = next(i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y)
    end = len(a) - next(i for i, (x, y) in enumerate(zip(a[::-1], b[::-1], strict=True)) if x != y)
    # the clauses swapped may begin alike ("if I work…, do I get…"): try the whole sequence too
    return _rotated(a[start:end], b[start:end]) or _rotated(a, b)


def _rotated(a: list[str], b: list[str]) -> bool:
    return len(a) >= 3 and any(a[cut:] + a[:cut] == b for cut in range(1, len(a)))
