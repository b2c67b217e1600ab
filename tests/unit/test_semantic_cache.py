from __future__ import annotations

import asyncio

import pytest

from application.semantic_cache import CachePolicy, SemanticCache
from domain.model import (
    CacheStatus,
    Completion,
    FinishReason,
    InferenceRequest,
    Message,
    Role,
    Usage,
)
from domain.same_question import QuestionJudge
from tests.fakes import (
    FakeClock,
    FakeSleeper,
    MemoryIndex,
    MemoryStore,
    RecordingMetrics,
    RecordingTracer,
    WordEmbedder,
)


class Cache:
    def __init__(self, threshold: float = 0.8, ttl: float = 60.0, timeout: float = 0.2) -> None:
        self.clock = FakeClock()
        self.embedder = WordEmbedder()
        self.index = MemoryIndex()
        self.store = MemoryStore(self.clock)
        self.metrics = RecordingMetrics()
        self.cache = SemanticCache(
            self.embedder,
            self.index,
            self.store,
            CachePolicy(threshold=threshold, ttl=ttl, timeout=timeout),
            QuestionJudge(),
            self.clock,
            self.metrics,
            RecordingTracer(),
        )

    async def put(self, request: InferenceRequest, completion: Completion) -> None:
        """Stores, then indexes what the store left in the backlog."""
        await self.cache.store(request, completion)
        await self.cache.index_pending()


def ask(
    prompt: str, model: str = "gpt-4o", system: str | None = None, **kw: object
) -> InferenceRequest:
    messages = ((Message(Role.SYSTEM, system),) if system else ()) + (Message(Role.USER, prompt),)
    return InferenceRequest(model, messages, **kw)  # type: ignore[arg-type]


def answer(text: str = "an answer") -> Completion:
    return Completion(text, "gpt-4o", "openai", FinishReason.STOP, Usage(3, 2))


@pytest.fixture
def c() -> Cache:
    return Cache()


async def test_the_same_request_is_an_exact_hit(c: Cache) -> None:
    await c.put(ask("What is the capital of France?"), answer("Paris"))
    hit = await c.cache.lookup(ask("What is the capital of France?"), "openai")
    assert hit is not None
    assert hit.cache.status is CacheStatus.EXACT
    assert hit.completion.content == "Paris"


async def test_a_close_paraphrase_is_a_semantic_hit_with_its_similarity(c: Cache) -> None:
    await c.put(ask("what is the capital of France"), answer("Paris"))
    hit = await c.cache.lookup(ask("what is the capital of France please"), "openai")
    assert hit is not None
    assert hit.cache.status is CacheStatus.SEMANTIC
    assert 0.8 <= hit.cache.similarity < 1.0


@pytest.mark.parametrize(
    ("stored", "asked"),
    [
        ("convert 100 USD to EUR", "convert 100 EUR to USD"),
        ("What is 2+3?", "What is 2+2?"),
        ("is the file config_a.yaml valid", "is the file config_b.yaml valid"),
        ("is paris in france", "is paris not in france"),
    ],
)
async def test_numbers_identifiers_and_negation_never_hit_each_other(
    stored: str, asked: str
) -> None:
    c = Cache(threshold=0.5)
    await c.put(ask(stored), answer())
    assert await c.cache.lookup(ask(asked), "openai") is None


async def test_scope_is_a_hard_filter(c: Cache) -> None:
    await c.put(ask("tell me a joke", system="be formal"), answer())
    assert await c.cache.lookup(ask("tell me a joke", system="be formal"), "openai")
    assert await c.cache.lookup(ask("tell me a joke", system="be silly"), "openai") is None
    assert await c.cache.lookup(ask("tell me a joke", model="gpt-4.1"), "openai") is None
    assert await c.cache.lookup(ask("tell me a joke", system="be formal"), "gemini") is None
    assert (
        await c.cache.lookup(ask("tell me a joke", system="be formal", temperature=1.5), "openai")
        is None
    )
    assert (
        await c.cache.lookup(ask("tell me a joke", system="be formal", tenant="other"), "openai")
        is None
    )


async def test_below_the_threshold_is_a_miss() -> None:
    c = Cache(threshold=0.99)
    await c.put(ask("what is the capital of France"), answer())
    assert await c.cache.lookup(ask("what is the capital of France exactly"), "openai") is None


async def test_expired_entries_miss_and_the_sweep_removes_their_vectors(c: Cache) -> None:
    await c.put(ask("How do I reset my password?"), answer())
    c.clock.advance(61.0)
    assert await c.cache.lookup(ask("How do I reset my password?"), "openai") is None
    assert await c.cache.lookup(ask("How can I reset my password"), "openai") is None
    assert await c.cache.sweep() == 1
    assert c.index.points == {}


async def test_a_vector_whose_answer_is_gone_is_a_miss_and_is_deleted(c: Cache) -> None:
    await c.put(ask("How do I reset my password?"), answer())
    c.store.entries.clear()
    assert await c.cache.lookup(ask("How can I reset my password"), "openai") is None
    assert c.index.points == {}


async def test_storing_twice_keeps_one_vector(c: Cache) -> None:
    await c.put(ask("How do I reset my password?"), answer("one"))
    await c.put(ask("How do I reset my password?"), answer("two"))
    assert len(c.index.points) == 1
    hit = await c.cache.lookup(ask("How do I reset my password?"), "openai")
    assert hit is not None
    assert hit.completion.content == "two"


async def test_identical_text_is_embedded_once(c: Cache) -> None:
    await c.cache.lookup(ask("How do I reset my password?"), "openai")
    await c.put(ask("How do I reset my password?"), answer())
    await c.cache.lookup(ask("How can I reset my password"), "openai")
    # the embedder is given the normalised words (case, punctuation and contractions do not
    # move the vector), and each text once
    assert c.embedder.calls == ["how do i reset my password", "how can i reset my password"]


async def test_the_embedding_lru_is_keyed_by_a_digest_not_by_the_prompt(c: Cache) -> None:
    await c.cache.lookup(ask("How do I reset my password?"), "openai")
    keys = list(c.cache._vectors)
    assert len(keys) == 1
    assert isinstance(keys[0], bytes)
    assert len(keys[0]) == 32
    assert b"password" not in keys[0]


async def test_the_embedding_lru_is_per_tenant(c: Cache) -> None:
    # a tenant whose lookup is fast because another tenant asked the same text first would learn
    # what the other asked (a timing side channel): each tenant embeds its own texts
    await c.cache.lookup(ask("How do I reset my password?", tenant="tenant-a"), "openai")
    await c.cache.lookup(ask("How do I reset my password?", tenant="tenant-b"), "openai")
    await c.cache.lookup(ask("How do I reset my password?", tenant="tenant-a"), "openai")
    assert c.embedder.calls == ["how do i reset my password"] * 2  # a's repeat is remembered


@pytest.mark.parametrize("backend", ["embedder", "index", "store"])
async def test_a_broken_backend_is_a_counted_miss_and_recovers(c: Cache, backend: str) -> None:
    await c.put(ask("How do I reset my password?"), answer())
    target = {"embedder": c.embedder, "index": c.index, "store": c.store}[backend]
    target.broken = True
    assert await c.cache.lookup(ask("How can I reset my password"), "openai") is None
    await c.put(ask("another question"), answer())
    assert c.metrics.cache_errors
    target.broken = False
    hit = await c.cache.lookup(ask("How can I reset my password"), "openai")
    assert hit is not None


async def test_a_slow_backend_is_bounded_by_the_timeout() -> None:
    c = Cache(timeout=0.05)
    await c.put(ask("How do I reset my password?"), answer())
    c.embedder.delay = 5.0
    assert await c.cache.lookup(ask("How can I reset my password"), "openai") is None
    assert c.metrics.cache_errors == ["embed"]


async def test_the_index_is_made_ready_with_the_embedder_dimension(c: Cache) -> None:
    await c.put(ask("hello"), answer())
    assert c.index.dimension == c.embedder.dimension


PREAMBLE = " ".join(["You are a support assistant for a phone company, answer politely."] * 6)


async def test_a_prompt_longer_than_the_embedder_window_is_served_by_the_exact_tier_only(
    c: Cache,
) -> None:
    first, second = PREAMBLE + " What is the capital of France?", PREAMBLE + " Who wrote Hamlet?"
    assert not c.embedder.fits(first)
    await c.put(ask(first), answer("Paris"))
    assert await c.cache.lookup(ask(second), "openai") is None
    assert c.metrics.semantic_skips == ["beyond_window"]
    assert c.embedder.calls == []  # neither stored as a vector nor embedded at lookup
    hit = await c.cache.lookup(ask(first), "openai")
    assert hit is not None
    assert hit.cache.status is CacheStatus.EXACT


async def test_code_differing_only_in_indentation_is_a_miss(c: Cache) -> None:
    stored = "What does this print?\nfor x in xs:\n    f(x)\n    print('done')"
    asked = "What does this print?\nfor x in xs:\n    f(x)\nprint('done')"
    await c.put(ask(stored), answer())
    assert await c.cache.lookup(ask(asked), "openai") is None
    assert await c.cache.lookup(ask(stored), "openai") is not None


async def test_one_budget_bounds_the_whole_lookup_not_each_call() -> None:
    c = Cache(timeout=0.3)
    await c.put(ask("How do I reset my password?"), answer())
    c.embedder.delay = 0.2  # each call alone is within the budget; together they are not
    c.index.delay = 0.2
    assert await c.cache.lookup(ask("How can I reset my password"), "openai") is None
    assert c.metrics.cache_errors == ["search"]


async def test_a_down_backend_logs_its_state_changes_and_a_periodic_summary(
    c: Cache, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="application.semantic_cache")
    c.store.broken = True
    for _ in range(50):
        await c.cache.lookup(ask("How do I reset my password?"), "openai")
    c.clock.advance(61.0)
    for _ in range(50):
        await c.cache.lookup(ask("How do I reset my password?"), "openai")
    c.store.broken = False
    await c.cache.lookup(ask("How do I reset my password?"), "openai")
    await c.cache.lookup(ask("How do I reset my password?"), "openai")
    lines = [r.getMessage() for r in caplog.records]
    assert len(c.metrics.cache_errors) == 100  # every failure is counted
    assert lines == [
        "cache response_store is down (ConnectionError): lookups miss until it recovers",
        "cache response_store still down: 50 more failed calls (last: ConnectionError)",
        "cache response_store is back after 100 failed calls",
    ]


# -- under load: lookups share a busy embedder, stores wait in the index backlog ---------------


def cache_with(**policy: float) -> Cache:
    c = Cache()
    c.cache = SemanticCache(
        c.embedder, c.index, c.store,
        CachePolicy(threshold=0.8, ttl=60.0, timeout=0.2, **policy),  # type: ignore[arg-type]
        QuestionJudge(), c.clock, c.metrics, RecordingTracer(),
    )  # fmt: skip
    return c


async def test_a_lookup_waits_for_a_busy_embedder_when_its_vector_comes_within_the_budget(
    c: Cache,
) -> None:
    await c.put(ask("How do I reset my password?"), answer())
    c.embedder.wait = 0.1  # of a 0.2 s budget: the vector is ready with a fifth of it left
    hit = await c.cache.lookup(ask("How can I reset my password"), "openai")
    assert hit is not None
    assert hit.cache.status is CacheStatus.SEMANTIC
    assert c.metrics.semantic_skips == []


async def test_a_lookup_skips_the_semantic_tier_only_when_its_vector_would_come_too_late(
    c: Cache,
) -> None:
    await c.put(ask("How do I reset my password?"), answer())
    c.embedder.wait = 0.17  # past the budget less the fifth left for the search
    c.embedder.calls.clear()
    assert await c.cache.lookup(ask("How can I reset my password"), "openai") is None
    assert c.embedder.calls == []
    assert c.metrics.semantic_skips == ["embedder_busy"]
    assert c.metrics.cache_errors == []  # a busy embedder is not a failure
    hit = await c.cache.lookup(ask("How do I reset my password?"), "openai")
    assert hit is not None
    assert hit.cache.status is CacheStatus.EXACT


async def test_a_queueing_embedder_that_misses_the_budget_was_busy_not_down(c: Cache) -> None:
    await c.put(ask("How do I reset my password?"), answer())
    c.embedder.wait = 0.01  # it says it has a queue, then takes far longer
    c.embedder.delay = 5.0
    assert await c.cache.lookup(ask("How can I reset my password"), "openai") is None
    assert c.metrics.semantic_skips == ["embedder_busy"]
    assert c.metrics.cache_errors == []
    assert c.cache.states["embedder"] == "up"


async def test_a_stored_answer_serves_the_exact_tier_at_once_and_the_semantic_one_once_indexed(
    c: Cache,
) -> None:
    prompts = ["How do I reset my password?", "Where is my parcel?", "How do I close my account?"]
    for prompt in prompts:
        await c.cache.store(ask(prompt), answer(prompt))
    assert c.metrics.index_backlog == 3
    assert c.index.points == {}
    hit = await c.cache.lookup(ask("Where is my parcel?"), "openai")
    assert hit is not None
    assert hit.cache.status is CacheStatus.EXACT
    assert await c.cache.lookup(ask("how do I reset my password"), "openai") is None
    assert await c.cache.index_pending() == 0
    # one background batch, without the text the lookup embedded meanwhile
    assert c.embedder.background_calls == [["where is my parcel", "how do i close my account"]]
    assert c.metrics.index_backlog == 0
    hit = await c.cache.lookup(ask("how do I reset my password"), "openai")
    assert hit is not None
    assert hit.cache.status is CacheStatus.SEMANTIC


async def test_a_miss_hands_its_lookup_vector_to_the_store(c: Cache) -> None:
    assert await c.cache.lookup(ask("How do I reset my password?"), "openai") is None
    await c.cache.store(ask("How do I reset my password?"), answer())
    assert len(c.index.points) == 1  # indexed by the store itself, not the backlog
    assert c.metrics.index_backlog == 0
    assert c.embedder.calls == ["how do i reset my password"]  # embedded once
    assert c.embedder.background_calls == []


async def test_the_indexer_works_in_batches_of_index_batch() -> None:
    c = cache_with(index_batch=2)
    for i in range(5):
        await c.cache.store(ask(f"What is the capital of country {i}?"), answer())
    await c.cache.index_pending()
    assert [len(batch) for batch in c.embedder.background_calls] == [2, 2, 1]
    assert len(c.index.points) == 5


async def test_a_full_backlog_drops_the_oldest_and_counts_them() -> None:
    c = cache_with(index_backlog=2)
    for prompt in ("How do I reset my password?", "Where is my parcel?", "Who won the cup?"):
        await c.cache.store(ask(prompt), answer())
    assert c.metrics.index_dropped == {"full": 1}
    assert c.metrics.index_backlog == 2
    await c.cache.index_pending()
    assert await c.cache.lookup(ask("How can I reset my password"), "openai") is None
    hit = await c.cache.lookup(ask("Where is my parcel please?"), "openai")
    assert hit is not None
    assert hit.cache.status is CacheStatus.SEMANTIC


async def test_a_failing_embedder_keeps_the_backlog_then_gives_an_entry_up(c: Cache) -> None:
    await c.cache.store(ask("How do I reset my password?"), answer())
    c.embedder.broken = True
    assert await c.cache.index_pending() == 1  # kept for the next try
    assert await c.cache.index_pending() == 1
    assert await c.cache.index_pending() == 0  # the third failure gives it up
    assert c.metrics.index_dropped == {"failed": 1}
    assert c.metrics.cache_errors == ["embed"] * 3
    c.embedder.broken = False
    hit = await c.cache.lookup(ask("How do I reset my password?"), "openai")
    assert hit is not None
    assert hit.cache.status is CacheStatus.EXACT


async def test_an_answer_that_expired_in_the_backlog_is_not_indexed(c: Cache) -> None:
    await c.cache.store(ask("How do I reset my password?"), answer())
    c.clock.advance(61.0)
    assert await c.cache.index_pending() == 0
    assert c.embedder.background_calls == []
    assert c.index.points == {}


async def test_indexing_cut_short_loses_nothing_and_shutdown_counts_what_is_left(
    c: Cache, caplog: pytest.LogCaptureFixture
) -> None:
    for prompt in ("How do I reset my password?", "Where is my parcel?"):
        await c.cache.store(ask(prompt), answer())
    c.embedder.gate.clear()  # the embedder is busy with lookups: background work waits
    assert await c.cache.index_pending(within=0.02) == 2
    assert c.metrics.index_backlog == 2
    await c.cache.finish_indexing(within=0.02)
    assert c.metrics.index_dropped == {"shutdown": 2}
    assert c.metrics.index_backlog == 0
    assert "2 stored answers were not indexed" in caplog.text


async def test_index_forever_indexes_as_answers_are_stored(c: Cache) -> None:
    indexer = asyncio.create_task(c.cache.index_forever(FakeSleeper(c.clock)))
    try:
        await c.cache.store(ask("How do I reset my password?"), answer())
        for _ in range(100):
            if c.index.points:
                break
            await asyncio.sleep(0.001)
        hit = await c.cache.lookup(ask("How can I reset my password"), "openai")
        assert hit is not None
        assert hit.cache.status is CacheStatus.SEMANTIC
    finally:
        indexer.cancel()
