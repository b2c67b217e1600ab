"""The same-question judge, one test per kind of mistake. Similarity is passed as 1.0: these
are the pairs cosine cannot tell apart, so the judge alone must."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.outbound.lexicon import english_lexicon
from domain.same_question import QuestionJudge

JUDGE = QuestionJudge(english_lexicon())  # the word lists the proxy loads at startup
same_question = JUDGE.same
embedding_text = JUDGE.embedding_text


def judged_same(a: str, b: str) -> bool:
    verdicts = {same_question(a, b, 1.0, 0.95), same_question(b, a, 1.0, 0.95)}
    assert len(verdicts) == 1, "the judge must be symmetric"
    return verdicts.pop()


def different(*pairs: tuple[str, str]) -> pytest.MarkDecorator:
    return pytest.mark.parametrize(("a", "b"), pairs)


@different(
    ("Is the gallery open on Sundays?", "Is the gallery closed on Sundays?"),
    ("Is it safe to fly while pregnant?", "Is it unsafe to fly while pregnant?"),
    ("Is the booking refundable?", "Is the booking non-refundable?"),
    ("Is the booking refundable?", "Is the booking nonrefundable?"),
    ("Does the rent include utilities?", "Does the rent exclude utilities?"),
    ("Should I take zinc for a cold?", "Should I avoid zinc for a cold?"),
    ("Are bikes allowed on the ferry?", "Are bikes forbidden on the ferry?"),
    ("Is Paris in France?", "Is Paris not in France?"),
    ("Why doesn't it compile?", "Why does it compile?"),
    ("Can I park here overnight?", "Can't I park here overnight?"),
    ("How do I enable autosave?", "How do I disable autosave?"),
    ("Is the charger included?", "Is the charger sold separately?"),
    ("How do I give a refund?", "How do I get a refund?"),
    ("Do I have to pay for parking?", "Can I pay for parking?"),
)
def test_negation_antonyms_and_prefix_polarity_are_different_questions(a: str, b: str) -> None:
    assert not judged_same(a, b)


@different(
    ("Show me phones under £300.", "Show me phones over £300."),
    ("Which trains leave before noon?", "Which trains leave after noon?"),
    ("Which plan has more storage?", "Which plan has less storage?"),
    ("What is the minimum order?", "What is the maximum order?"),
    ("Sort the names ascending.", "Sort the names descending."),
)
def test_comparatives_are_different_questions(a: str, b: str) -> None:
    assert not judged_same(a, b)


@different(
    ("Wake me at 6am.", "Wake me at 6pm."),
    ("Wake me at 6 am.", "Wake me at 6 p.m."),
    ("Is the bank open on weekdays?", "Is the bank open on weekends?"),
    ("What is the weather in Oslo in August?", "What is the weather in Oslo in October?"),
    ("Is the clinic open on Tuesday?", "Is the clinic open on Thursday?"),
    ("Any buses in the morning?", "Any buses in the evening?"),
    ("What is 2+3?", "What is 2+2?"),
    ("What is 2+2?", "What is 2+2+2?"),
    ("price of item 1.5", "price of item 15"),
    ("Convert 100 dollars to euros.", "Convert 200 dollars to euros."),
    ("Give me three tips.", "Give me five tips."),
    ("What is -5 squared?", "What is 5 squared?"),
    ("What is 5-3?", "What is 5+3?"),
    ("When did the shop open?", "When will the shop open?"),
    ("Kids under 12 ride free?", "Kids over 12 ride free?"),
)
def test_numbers_dates_and_times_are_different_questions(a: str, b: str) -> None:
    assert not judged_same(a, b)


@different(
    ("Can I return it within 30 days?", "Can I return it after 30 days?"),
    ("Do full-time staff get a pension?", "Do part-time staff get a pension?"),
    ("How much is domestic postage?", "How much is international postage?"),
    ("What does the monthly plan cost?", "What does the annual plan cost?"),
    ("Is the offer for new customers?", "Is the offer for existing customers?"),
)
def test_scope_qualifiers_are_different_questions(a: str, b: str) -> None:
    assert not judged_same(a, b)


@different(
    ("How do I convert Word to PDF?", "How do I convert PDF to Word?"),
    ("How do I convert Word → PDF?", "How do I convert PDF → Word?"),
    ("Flights from Rome to Oslo", "Flights from Oslo to Rome"),
    ("100 USD to EUR", "100 EUR to USD"),
    ("Is Rust faster than Go?", "Is Go faster than Rust?"),
    ("Does the dog chase the cat?", "Does the cat chase the dog?"),
    ("What is the capital of Austria?", "What is the capital of Australia?"),
    ("explain os.path.join", "explain os.path.split"),
    ("what does user_id mean", "what does user_name mean"),
    ("call getUserById", "call getUserByName"),
    ("Redirect HTTP to HTTPS", "Redirect HTTPS to HTTP"),
    ("Where is the meeting?", "When is the meeting?"),
    ("What is the EUR USD rate?", "What is the USD EUR rate?"),
    ("Is the mother of the child here?", "Is the child of the mother here?"),
)
def test_swapped_entities_and_directions_are_different_questions(a: str, b: str) -> None:
    assert not judged_same(a, b)


@different(
    ("Как дела?", "Где вокзал?"),
    ("¿Dónde está la estación?", "¿Cuándo abre la estación?"),
    ("你好吗", "火车站在哪里"),
    ("🚀🚀", "🎉🎉"),
)
def test_prompts_in_other_scripts_or_without_words_are_compared_too(a: str, b: str) -> None:
    assert not judged_same(a, b)


def test_code_differing_only_in_indentation_is_a_different_question() -> None:
    a = "Why does this loop print once?\nfor x in xs:\n    if x:\n        log(x)\n    done()"
    b = "Why does this loop print once?\nfor x in xs:\n    if x:\n        log(x)\n        done()"
    assert not judged_same(a, b)
    assert judged_same(a, a)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("How do I reset my router?", "HOW DO I RESET MY ROUTER?"),
        ("How do I reset my router?", "how do i reset my router"),
        ("What is the refund policy?", "What is the refund policy"),
        ("Where's my parcel?", "Where is my parcel?"),
        ("I can't log in, what now?", "I cannot log in, what now?"),
        ("Why won't the app open?", "Why will the app not open?"),
        ("Why doesn't the tap work?", "Why does the tap not work?"),
        ("How do I set up voicemail on my phone?", "On my phone, how do I set up voicemail?"),
        ("Can I get a refund if my flight is late?", "If my flight is late, can I get a refund?"),
        ("How do I reverse a list in Python?", "How can I reverse a list in Python?"),
        ("What is the capital of France?", "Tell me the capital of France, please."),
        ("What time does the shop open?", "When does the shop open?"),
        ("How do I update my address?", "How do I change my address?"),
        ("What's the best way to learn Go?", "How do I learn Go?"),
        ("convert 100 USD to EUR", "Convert 100 usd to eur."),
        ("Why isn't the dishwasher draining?", "Why is the dishwasher not draining?"),
        ("How do I change the language of the app?", "How do I change the app language?"),
        ("What are the museum's opening hours?", "What are the opening hours of the museum?"),
        ("Which plan is best for a family of four?", "For a family of 4, which plan is best?"),
        ("Can you tell me how to reset my PIN?", "How do I reset my PIN?"),
        ("How to reset my PIN", "How do I reset my PIN?"),
        ("Do I need to bring ID?", "Do I have to bring ID?"),
        ("If I work late, do I get paid extra?", "Do I get paid extra if I work late?"),
        ("How do you boil an egg?", "How do I boil an egg?"),
        ("¿Dónde está la estación?", "¿DÓNDE ESTÁ LA ESTACIÓN"),
    ],
)
def test_form_and_true_paraphrases_are_the_same_question(a: str, b: str) -> None:
    assert judged_same(a, b)


def test_below_the_threshold_nothing_is_the_same_question() -> None:
    assert not same_question("hello", "hello", 0.9, 0.95)


def test_the_embedder_sees_normalised_words_and_code_as_it_is() -> None:
    assert embedding_text("WHAT'S the Refund policy?") == embedding_text(
        "what is the refund policy"
    )
    code = "Fix this:\n  a:\n    b: 1"
    assert embedding_text(code) == code


@given(st.text(max_size=80))
def test_every_prompt_is_the_same_question_as_itself(text: str) -> None:
    assert same_question(text, text, 1.0, 0.95)


@given(st.text(max_size=60), st.text(max_size=60))
def test_the_judge_never_fails_on_any_text(a: str, b: str) -> None:
    same_question(a, b, 1.0, 0.95)
    embedding_text(a)
