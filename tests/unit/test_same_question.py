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
    ("What is 5--1?", "What is 5-1?"),
    ("What is 5 - -1?", "What is 5 - 1?"),
    ("What is 5-(-1)?", "What is 5-1?"),
    ("What is (2+3)*4?", "What is 2+3*4?"),
    ("What does x -= 1 do?", "What does x = 1 do?"),
    ("Is a != b here?", "Is a = b here?"),
    ("What is 3 \u00d7 2?", "What is 3 - 2?"),
    ("What is 2^3?", "What is 2\u00d73?"),
    ("What is √16?", "What is 16?"),
    ("What is 5!", "What is 5?"),
    ("Is x ≤ 5 allowed?", "Is x ≥ 5 allowed?"),
    ("Is 12 ÷ 4 an integer?", "Is 12 4 an integer?"),
)
def test_the_signs_of_a_formula_are_content(a: str, b: str) -> None:
    """A sign the tokenizer does not keep would make two formulas one question."""
    assert not judged_same(a, b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("What is 3 \u2212 2?", "What is 3 - 2?"),  # the minus sign and the hyphen
        ("Is 20°C warm?", "Is 20 degrees C warm?"),
        ("Hi! 😊 How do I reset my password?", "How do I reset my password?"),
        ("Quick one - how do I reset my password?", "How do I reset my password?"),
        ("What's the price (in euros)?", "What is the price in euros?"),
        ("Opening hours — Mon to Fri?", "Opening hours Mon to Fri?"),
    ],
)
def test_punctuation_and_emoji_in_prose_are_not_content(a: str, b: str) -> None:
    assert judged_same(a, b)


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


# --- typos, greetings, spelling and light rephrasing (the everyday phrasing of real users) ---


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("How do I change the email address on my account?",
         "How do I chnage the email adress on my acount?"),  # transposition, letters left out
        ("Are you open on Mondays?", "are you open on mondys"),
        ("How do I renew my prescription?", "How do I renew my perscription?"),
        ("How long does delivery take?", "How long does delivrey take?"),  # then a synonym
        ("Where is the accommodation?", "Where is the acommodation?"),
        ("Is the restaurant open?", "Is the restuarant open?"),
        ("What is the procedure for a complaint?", "What is the proceedure for a complaint?"),
        ("What is your return policy?", "What is yuor return policy?"),  # a form word's typo
        ("Can I get a refund on my prescription?", "Can I get a refnud on my presrciption?"),
    ],
)  # fmt: skip
def test_an_unknown_word_one_or_two_edits_from_a_known_word_is_a_typo(a: str, b: str) -> None:
    assert judged_same(a, b)


@different(
    ("How do I pay off my debt?", "How do I pay off my debit?"),
    ("Where do I get the form?", "Where do I get the from?"),
    ("Is the hotel quiet?", "Is the hotel quite?"),
    ("What happens if I lose my card?", "What happens if I loose my card?"),
    ("How does caffeine affect sleep?", "How does caffeine effect sleep?"),
    ("What is the best dessert in Cairo?", "What is the best desert in Cairo?"),
    ("Do you accept cash?", "Do you except cash?"),
    ("How do I close my account?", "How do I clone my account?"),
    ("Is the meat cooked?", "Is the meal cooked?"),
)
def test_a_known_word_is_never_a_typo_of_another(a: str, b: str) -> None:
    assert not judged_same(a, b)


@different(
    ("How do I set up email on my phone?", "How do I set up Gmail on my phone?"),  # first letter
    ("Where is the bank?", "Where is the bnka?"),  # 4-7 letters: one edit, here two
    ("What is the fee?", "What is the fe?"),  # under 4 letters: never a typo
    ("Is the cat ill?", "Is the cta ill?"),
    ("What is the accommodation?", "What is the acomodasion?"),  # 3 edits
    ("call getUserById", "call getUserByIdd"),  # neither side is a known word
)
def test_what_is_not_read_as_a_typo(a: str, b: str) -> None:
    assert not judged_same(a, b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("How do I reset my password?", "Hi, quick one: how do I reset my password?"),
        ("Do you do takeaway?", "Just wondering, do you do takeaway?"),
        ("Is parking free?", "Sorry to bother you, but is parking free?"),
        ("How do I track my parcel?", "How do I track my parcel? Cheers"),
        ("Can I change the date?", "Hello team, can I change the date? Thanks in advance"),
        ("Are you open on Sunday?", "Good morning! Are you open on Sunday?"),
        ("Where is the branch?", "Morning, where is the branch? Many thanks"),
        ("Can I pay by card?", "I was wondering if I can pay by card"),
        ("Is breakfast included?", "Hey there - is breakfast included? Kind regards"),
        ("How do I cancel?", "Quick question: how do I cancel please?"),
    ],
)
def test_greetings_thanks_and_filler_at_either_end_are_not_content(a: str, b: str) -> None:
    assert judged_same(a, b)


@different(
    ("Thanks, I need a receipt.", "No thanks, I don't need a receipt."),
    ("Hi, please cancel my booking.", "Hi, please don't cancel my booking."),
    ("Sorry, can I log in from abroad?", "Sorry, I can't log in from abroad?"),
    ("Cheers, the refund arrived.", "Cheers, the refund never arrived."),
    ("Morning appointments?", "Appointments?"),  # "morning" is filler only before a comma
    ("Is the hotel open?", "Is the hotel open? Thanks, not for me"),
)
def test_a_pleasantry_never_hides_a_negation_or_a_word_that_is_content(a: str, b: str) -> None:
    assert not judged_same(a, b)


@different(
    ("Can I pay the invoice by card?", "Can I pay just the invoice by card?"),
    ("Can I return the shoes?", "Can I return only the shoes?"),
    ("Do I pay VAT?", "Do I pay VAT too?"),
    ("Is delivery free?", "Is delivery always free?"),
    ("How do I delete my account?", "How do I delete my account for good?"),
    ("Is the offer for good customers?", "Is the offer for customers?"),
)
def test_a_filler_that_changes_the_scope_is_content(a: str, b: str) -> None:
    assert not judged_same(a, b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("Where is the city center?", "Where is the city centre?"),
        ("What color is the logo?", "What colour is the logo?"),
        ("How do I organize my files?", "How do I organise my files?"),
        ("Can I renew my license online?", "Can I renew my licence online?"),
        ("How do I check my tire pressure?", "How do I check my tyre pressure?"),
        ("Can I pay in installments?", "Can I pay in instalments?"),
        ("Was my order canceled?", "Was my order cancelled?"),
    ],
)
def test_british_and_american_spellings_are_one_word(a: str, b: str) -> None:
    assert judged_same(a, b)


def test_a_british_word_that_is_not_the_same_thing_in_america_stays_apart() -> None:
    assert not judged_same("How many pounds in a tonne?", "How many pounds in a ton?")


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("Have you got gluten-free bread?", "Do you have gluten-free bread?"),
        ("Has it got a dishwasher?", "Does it have a dishwasher?"),
        ("I've got a question about my bill", "I have a question about my bill"),
        ("What's the wait time?", "What is the waiting time?"),
        ("How long is the waiting list?", "How long is the wait list?"),
        ("What is the quickest way to the airport?", "What is the fastest way to the airport?"),
        ("Which is the fastest train to Leeds?", "Which is the quickest train to Leeds?"),
        ("How do I switch energy supplier?", "How do I change energy supplier?"),
        ("Can I switch to the annual plan?", "Can I change to the annual plan?"),
        ("Am I able to bring food in?", "Can I bring food in?"),
        ("Are you able to deliver on Sunday?", "Can you deliver on Sunday?"),
        ("Is there a way to recover deleted photos?", "How do I recover deleted photos?"),
        ("Evening all, how do I book a table?", "How do I book a table?"),
        ("Can you quickly explain recursion?", "Explain recursion."),
        ("How can I lose weight quickly?", "How can I lose weight fast?"),
    ],
)
def test_light_rephrasings_that_ask_the_same_in_every_context(a: str, b: str) -> None:
    assert judged_same(a, b)


@different(
    ("Have you got my email?", "Have you not got my email?"),
    ("What is the waiting time?", "What is the waiting room?"),
    ("How do I switch on the heating?", "How do I change the heating?"),
    ("Where is the light switch?", "Where is the light change?"),
    ("When did you get it?", "When have you got it?"),
    ("Am I able to bring food in?", "Are you able to bring food in?"),
    ("Is there a way to recover deleted photos?", "Is there a way to lose deleted photos?"),
    ("Evening appointments?", "Appointments?"),
    # a synonym only in some contexts is none: "a flat fee" is not "an apartment fee", "a little
    # milk" (an amount) is not "a small milk" (a size)
    ("Is there a flat fee for cleaning?", "Is there an apartment fee for cleaning?"),
    ("Can I have a little milk in it?", "Can I have a small milk in it?"),
    # "quickly" asks for a fast way, except before the verb that asks for a short answer
    ("How do I cook rice quickly?", "How do I cook rice?"),
    ("How do I get to the airport quickly?", "How do I get to the airport?"),
)
def test_light_rephrasings_keep_what_they_do_not_cover(a: str, b: str) -> None:
    assert not judged_same(a, b)


def test_the_embedder_sees_a_typo_corrected_and_the_filler_gone() -> None:
    assert embedding_text("Hi! How do I chnage my adress? Cheers") == embedding_text(
        "how do i change my address"
    )
    assert embedding_text("Where is the city centre?") == embedding_text(
        "Where is the city center?"
    )
    assert embedding_text("How do I renew my perscription?") == embedding_text(
        "How do I renew my prescription?"
    )


@different(
    ("What is the quickest way to the station?", "What is the easiest way to the station?"),
    ("What is the fastest way to learn to swim?", "How do I learn to swim?"),
    ("What's the cheapest way to heat my home?", "What's the best way to heat my home?"),
)
def test_a_way_measured_by_speed_or_cost_is_content(a: str, b: str) -> None:
    """ "best", "easiest", "simplest" ask how; "quickest", "cheapest" ask for one measure."""
    assert not judged_same(a, b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("What's the simplest way to clear my cache?", "How do I clear my cache?"),
        ("What is the fastest way to learn to swim?", "What's the quickest way to learn to swim?"),
        ("Give me the phone number for support", "What is the phone number for support?"),
        ("Give me some ideas for dinner", "What are some ideas for dinner?"),
        ("How can I reach customer support?", "How do I contact customer support?"),
        ("Can I reach someone by phone?", "Can I contact someone by phone?"),
    ],
)
def test_a_stock_phrasing_is_merged_where_it_asks_the_same(a: str, b: str) -> None:
    assert judged_same(a, b)


@different(
    ("Can you give me a refund?", "What is a refund?"),
    ("Could you give me a discount?", "What is a discount?"),
    ("Can you explain my bill?", "Can you show my bill?"),
    ("What's the best way to reach the airport?", "What's the best way to contact the airport?"),
    ("How do I reach the city centre?", "How do I contact the city centre?"),
    ("How much is a single ticket to Leeds?", "How much is one ticket to Leeds?"),
    ("Do you have a single room?", "Do you have one room?"),
    ("How much is a one-way ticket to Paris?", "How much is one ticket to Paris?"),
)
def test_a_word_is_merged_only_in_the_sense_both_share(a: str, b: str) -> None:
    """A request is not a definition, reaching a place is not contacting it, a single ticket is
    one way, not one ticket."""
    assert not judged_same(a, b)


@different(
    ("Should I tip in Japan?", "Can I tip in Japan?"),
    ("Can I eat eggs after the best before date?", "Should I eat eggs after the best before date?"),
    ("Should I bring my passport?", "Do I need to bring my passport?"),
    ("If it rains, should I cancel?", "If it rains, can I cancel?"),
)
def test_should_in_a_yes_no_question_asks_for_advice_not_leave(a: str, b: str) -> None:
    assert not judged_same(a, b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("What should I do if I lose my card?", "What do I do if I lose my card?"),
        ("How long should I boil an egg?", "How long do I boil an egg?"),
        ("Should I tip in Japan?", "should i tip in japan"),
    ],
)
def test_should_after_a_question_word_is_form(a: str, b: str) -> None:
    assert judged_same(a, b)


@different(
    ("Can I pay with card and cash?", "Can I pay with card or cash?"),
    ("Can I bring a dog and a cat?", "Can I bring a dog or a cat?"),
)
def test_or_is_content(a: str, b: str) -> None:
    assert not judged_same(a, b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("Is the deposit refundable or not?", "Is the deposit refundable?"),
        ("can I park here or not", "Can I park here?"),
    ],
)
def test_or_not_at_the_end_asks_nothing_more(a: str, b: str) -> None:
    assert judged_same(a, b)


@different(
    ("In Spanish, how do you say thank you?", "In Spanish, how do you say please?"),
    ("Is it rude not to say thank you?", "Is it rude not to say please?"),
    ("What's the German for thanks?", "What's the German for hello?"),
    ("Can I end a letter with kind regards?", "Can I end a letter with best wishes?"),
    ("How do you say hello in Italian?", "How do you say goodbye in Italian?"),
)
def test_a_pleasantry_the_question_is_about_is_content(a: str, b: str) -> None:
    assert not judged_same(a, b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("How do I track my parcel thanks", "How do I track my parcel?"),
        ("Can I check in online please", "Can I check in online?"),
        ("How do I say no to overtime? Thanks", "How do I say no to overtime?"),
    ],
)
def test_a_pleasantry_that_ends_the_message_is_still_form(a: str, b: str) -> None:
    assert judged_same(a, b)


@different(
    ("What's a good credit score?", "What's a credit score?"),
    ("What is a good resting heart rate?", "What is the best resting heart rate?"),
    ("Is this a good time to buy a house?", "Is this the time to buy a house?"),
)
def test_good_and_best_are_content(a: str, b: str) -> None:
    """A good score is a threshold, a score is a definition, the best one a maximum."""
    assert not judged_same(a, b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("What's a good way to save money?", "How do I save money?"),
        ("Which laptop is best for students?", "For students, which laptop is best?"),
        ("Is it cheaper for a family of four?", "For a family of four, is it cheaper?"),
    ],
)
def test_good_and_best_in_stock_phrasings_and_moved_clauses(a: str, b: str) -> None:
    assert judged_same(a, b)


@different(
    ("What does ls -a do?", "What does ls do?"),
    ("What does git push --force do?", "What does git push do?"),
    ("What does rm -rf do?", "What does rm -r do?"),
)
def test_a_command_line_option_is_content(a: str, b: str) -> None:
    assert not judged_same(a, b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("Do you deliver on Sundays?", "do u deliver on sundays"),
        ("Are you open late tonight?", "r u open late tonight"),
        ("Where are your toilets?", "where r ur toilets"),
        ("Can you resend your confirmation email?", "can u resend ur confirmation email pls"),
        ("I want to cancel my plan", "i wanna cancel my plan"),
        ("When is the next bus?", "whens the next bus"),
        ("There is a problem with my order", "theres a problem with my order"),
        ("We have paid twice", "weve paid twice"),
    ],
)
def test_chat_shorthand_and_contractions_without_apostrophes_are_form(a: str, b: str) -> None:
    assert judged_same(a, b)


@different(
    ("Can I do a U-turn here?", "Can I do a turn here?"),
    ("Do I need a visa for the U.S.?", "Do I need a visa?"),
    ("How do I install R packages?", "How do I install packages?"),
    ("r u open on sunday", "r u closed on sunday"),
    ("do u deliver", "dont u deliver"),
)
def test_shorthand_never_swallows_a_letter_that_names_something(a: str, b: str) -> None:
    assert not judged_same(a, b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("Can I freeze soup?", "Hey guys! Can I freeze soup? ta"),
        ("Can I change my email?", "Can I change my email? Thanks heaps"),
        ("How do I close my account?", "ok so how do I close my account"),
        ("How do I change my GP?", "Sorry if this is a silly question, but how do I change my GP?"),
        ("What is a mortgage?", "This might be a stupid question but what is a mortgage?"),
    ],
)
def test_more_everyday_greetings_and_sign_offs_are_not_content(a: str, b: str) -> None:
    assert judged_same(a, b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("When is the enrolment deadline?", "When is the enrollment deadline?"),
        ("Is the sauce flavourful?", "Is the sauce flavorful?"),
    ],
)
def test_the_nouns_of_a_british_spelling_are_one_word_too(a: str, b: str) -> None:
    assert judged_same(a, b)


def test_the_embedder_sees_may_and_could_i_as_can_i() -> None:
    assert embedding_text("May I bring my dog?") == embedding_text("Can I bring my dog?")
    assert embedding_text("Could we pay later?") == embedding_text("Can we pay later?")


def test_may_the_month_stays_a_month() -> None:
    assert "may" in embedding_text("Is the pool open in May? We arrive then").split()


@different(
    ("Can an adult bring a child in for free?", "Can an adult bring children in for free?"),
    ("Is there a fee for a checked bag?", "Is there a fee for checked bags?"),
    ("Can I bring a guest to the gym?", "Can I bring guests to the gym?"),
)
def test_one_thing_and_the_same_things_in_the_plural_are_different_questions(
    a: str, b: str
) -> None:
    """How many may be the question (one free child per adult); the judge cannot tell where it
    is not, so it errs towards a miss."""
    assert not judged_same(a, b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (
            "What's the minimum balance for a savings account?",
            "whats the minimum balance for a savings account",
        ),
        ("Do you have a kids menu?", "Good evening, do you have a kids menu?"),
        ("Are bikes allowed on trains?", "Are bikes allowed on the train?"),
    ],
)
def test_a_plural_word_after_a_is_not_counted(a: str, b: str) -> None:
    assert judged_same(a, b)
