"""The semantic cache over real gRPC, embedded mode (Qdrant Edge, SQLite, local MiniLM), with the
simulator as upstream."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from redis import Redis

from adapters.inbound.grpc.generated import proxy_pb2 as pb
from domain.cache_policy import cache_scope
from domain.model import InferenceRequest, Message, Role
from tests.containers import RedisServer, disposable_redis, redis_server  # noqa: F401
from tests.fakes import WordEmbedder
from tests.harness import SLACK, Stack, remote_cache, scrape, stack

PROMPT = "What is the capital of France?"
PARAPHRASE = "What exactly is the capital of France?"


def ask(prompt: str, model: str = "gpt-4o-mini", **kw: Any) -> pb.InferenceRequest:
    return pb.InferenceRequest(model=model, prompt=prompt, **kw)


def upstream_calls(s: Stack) -> int:
    return s.sim.stats.requests_total


async def stored(s: Stack) -> None:
    """Stores happen after the answer is sent: wait for them."""
    await s.proxy.container.inference().drain()


def backends(mode: str, tmp_path: Path, request: pytest.FixtureRequest) -> dict[str, Any]:
    """Settings and overrides for one cache mode. Remote: Redis from testcontainers (skipped
    with its reason without Docker) and the Qdrant adapter over qdrant-client's local mode (no
    Qdrant server exists here), with the local embedder."""
    if mode == "embedded":
        return {"cache_mode": "embedded", "cache_dir": str(tmp_path), **SLACK}
    redis: RedisServer = request.getfixturevalue("redis_server")
    with Redis.from_url(f"redis://{redis.addr}") as fresh:  # the server is shared by the session
        fresh.flushall()
    collection = f"llm_cache_{request.node.name}".replace("[", "_").replace("]", "")
    return remote_cache(tmp_path, redis.addr, collection)


@pytest.fixture(params=["embedded", "remote"])
async def s(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    settings = backends(request.param, tmp_path, request)
    async with stack(cache_ttl="60s", **settings) as running:
        yield running


async def test_a_repeated_request_is_an_exact_hit(s: Stack) -> None:
    first = await s.stub.Infer(ask(PROMPT))
    await stored(s)
    second = await s.stub.Infer(ask(PROMPT))
    assert first.cache.status == pb.CACHE_STATUS_MISS
    assert second.cache.status == pb.CACHE_STATUS_EXACT
    assert second.cache.similarity == pytest.approx(1.0)
    assert second.content == first.content
    assert second.usage == first.usage
    assert upstream_calls(s) == 1


async def test_a_paraphrase_is_a_semantic_hit_with_its_similarity(s: Stack) -> None:
    first = await s.stub.Infer(ask(PROMPT))
    await stored(s)
    hit = await s.stub.Infer(ask(PARAPHRASE))
    assert hit.cache.status == pb.CACHE_STATUS_SEMANTIC
    assert 0.95 <= hit.cache.similarity < 1.0
    assert hit.content == first.content
    assert upstream_calls(s) == 1


async def test_a_different_sum_is_a_miss(s: Stack) -> None:
    await s.stub.Infer(ask("What is 2+3?"))
    await stored(s)
    answer = await s.stub.Infer(ask("What is 2+2?"))
    assert answer.cache.status == pb.CACHE_STATUS_MISS
    assert upstream_calls(s) == 2


# A support bot's instructions, longer than the 256 word-pieces MiniLM reads: prompts that share
# it differ only past the embedder's window, so their vectors are identical.
PREAMBLE = (
    "You are the support assistant of a bookshop. Answer in two sentences at most, politely, "
    "in the customer's language. Never promise refunds; explain that a person decides and "
    "offer to open a ticket. Never ask for card numbers or passwords. Orders ship within two "
    "working days; tracking links arrive by email. Returns are accepted within thirty days "
    "with a receipt, except for opened audiobooks and gift cards. "
) * 4


async def test_prompts_sharing_a_preamble_longer_than_the_window_never_share_an_answer(
    s: Stack,
) -> None:
    first = PREAMBLE + "Question: what is the capital of France?"
    second = PREAMBLE + "Question: who wrote Hamlet?"
    assert not s.proxy.container.embedder().fits(first)
    answer = await s.stub.Infer(ask(first))
    await stored(s)
    other = await s.stub.Infer(ask(second))
    again = await s.stub.Infer(ask(first))
    assert other.cache.status == pb.CACHE_STATUS_MISS
    assert again.cache.status == pb.CACHE_STATUS_EXACT
    assert again.content == answer.content
    assert upstream_calls(s) == 2
    skips = (await scrape(s))[("cache_semantic_skips_total", (("reason", "beyond_window"),))]
    assert skips == 2  # both first lookups; the repeat was an exact hit before that point


async def test_code_differing_only_in_indentation_is_a_miss(s: Stack) -> None:
    question = "What does this print?\n\nfor i in range(3):\n    if i:\n        print(i)\n"
    stored_code = question + "    print('done')\n"
    indented = question + "        print('done')\n"
    await s.stub.Infer(ask(stored_code))
    await stored(s)
    answer = await s.stub.Infer(ask(indented))
    again = await s.stub.Infer(ask(stored_code))
    assert answer.cache.status == pb.CACHE_STATUS_MISS
    assert again.cache.status == pb.CACHE_STATUS_EXACT
    assert upstream_calls(s) == 2


async def test_an_antonym_is_a_miss(s: Stack) -> None:
    await s.stub.Infer(ask("Is the bookshop open on Sundays?"))
    await stored(s)
    answer = await s.stub.Infer(ask("Is the bookshop closed on Sundays?"))
    assert answer.cache.status == pb.CACHE_STATUS_MISS
    assert upstream_calls(s) == 2


async def test_another_model_or_system_prompt_is_a_miss(s: Stack) -> None:
    await s.stub.Infer(ask(PROMPT))
    await stored(s)
    other_model = await s.stub.Infer(ask(PROMPT, model="gpt-4.1"))
    with_system = await s.stub.Infer(
        pb.InferenceRequest(
            model="gpt-4o-mini",
            messages=[
                pb.Message(role=pb.ROLE_SYSTEM, content="Answer in French."),
                pb.Message(role=pb.ROLE_USER, content=PROMPT),
            ],
        )
    )
    assert other_model.cache.status == pb.CACHE_STATUS_MISS
    assert with_system.cache.status == pb.CACHE_STATUS_MISS
    assert upstream_calls(s) == 3


async def test_a_hit_is_replayed_through_infer_stream(s: Stack) -> None:
    first = await s.stub.Infer(ask(PROMPT, model="gemini-2.0-flash"))
    await stored(s)
    chunks = [c async for c in s.stub.InferStream(ask(PARAPHRASE, model="gemini-2.0-flash"))]
    *deltas, last = chunks
    assert "".join(d.content for d in deltas) == first.content
    assert last.done
    assert last.cache.status == pb.CACHE_STATUS_SEMANTIC
    assert last.usage == first.usage
    assert upstream_calls(s) == 1


async def test_a_complete_stream_is_stored(s: Stack) -> None:
    streamed = [c async for c in s.stub.InferStream(ask(PROMPT))]
    await stored(s)
    hit = await s.stub.Infer(ask(PROMPT))
    assert hit.cache.status == pb.CACHE_STATUS_EXACT
    assert hit.content == "".join(c.content for c in streamed)


async def test_a_truncated_answer_is_not_stored(s: Stack) -> None:
    cut = await s.stub.Infer(ask(PROMPT, max_tokens=3))
    await stored(s)
    again = await s.stub.Infer(ask(PROMPT, max_tokens=3))
    assert cut.finish_reason == pb.FINISH_REASON_LENGTH
    assert again.cache.status == pb.CACHE_STATUS_MISS
    assert upstream_calls(s) == 2


async def test_skip_lookup_and_skip_store(s: Stack) -> None:
    await s.stub.Infer(ask(PROMPT, cache=pb.CacheControl(skip_store=True)))
    await stored(s)
    miss = await s.stub.Infer(ask(PROMPT))
    await stored(s)
    bypass = await s.stub.Infer(ask(PROMPT, cache=pb.CacheControl(skip_lookup=True)))
    assert miss.cache.status == pb.CACHE_STATUS_MISS
    assert bypass.cache.status == pb.CACHE_STATUS_BYPASS
    assert upstream_calls(s) == 3


async def test_after_the_ttl_the_entry_is_a_miss_and_its_vector_is_gone(tmp_path: Path) -> None:
    async with stack(cache_mode="embedded", cache_dir=str(tmp_path), cache_ttl="1s", **SLACK) as s:
        await s.stub.Infer(ask(PROMPT))
        await stored(s)
        await asyncio.sleep(1.2)
        expired = await s.stub.Infer(ask(PARAPHRASE))
        assert expired.cache.status == pb.CACHE_STATUS_MISS
        container = s.proxy.container
        embedder, index = container.embedder(), container.vector_index()
        scope = cache_scope(
            InferenceRequest("gpt-4o-mini", (Message(Role.USER, PROMPT),)),
            "openai",
            embedder.identity,
        )
        (vector,) = await embedder.embed([PROMPT])
        # now=0 shows expired points too: the first answer's vector is still there...
        before = {m.text for m in await index.search(vector, scope, 0.0, 10)}
        assert before == {PROMPT, PARAPHRASE}  # (the paraphrase, a miss, was stored too)
        # ...until the sweep removes it; the paraphrase has not expired yet
        assert await container.semantic_cache().sweep() == 1
        assert [m.text for m in await index.search(vector, scope, 0.0, 10)] == [PARAPHRASE]


async def test_tenants_never_share_entries(tmp_path: Path) -> None:
    async with stack(
        cache_mode="embedded",
        cache_dir=str(tmp_path),
        auth_tokens="tok-alpha-1,tok-beta-22",
        **SLACK,
    ) as s:
        alpha = (("authorization", "Bearer tok-alpha-1"),)
        beta = (("authorization", "Bearer tok-beta-22"),)
        await s.stub.Infer(ask(PROMPT), metadata=alpha)
        await stored(s)
        same_tenant = await s.stub.Infer(ask(PROMPT), metadata=alpha)
        other_tenant = await s.stub.Infer(ask(PROMPT), metadata=beta)
    assert same_tenant.cache.status == pb.CACHE_STATUS_EXACT
    assert other_tenant.cache.status == pb.CACHE_STATUS_MISS


def cache_errors(
    metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float], backend: str
) -> float:
    return sum(
        value
        for (name, labels), value in metrics.items()
        if name == "cache_errors_total" and ("backend", backend) in labels
    )


async def test_redis_stopped_mid_run_fails_open_and_hits_resume(
    tmp_path: Path,
    disposable_redis: RedisServer,  # noqa: F811
) -> None:
    async with stack(**remote_cache(tmp_path, disposable_redis.addr, "fail_open")) as s:
        await s.stub.Infer(ask(PROMPT))
        await stored(s)
        assert (await s.stub.Infer(ask(PROMPT))).cache.status == pb.CACHE_STATUS_EXACT

        disposable_redis.stop()
        for prompt in (PROMPT, "Name a prime number.", "Name a colour."):
            answer = await s.stub.Infer(ask(prompt))
            assert answer.content.startswith("sim-")
            assert answer.cache.status == pb.CACHE_STATUS_MISS
        await stored(s)
        metrics = await scrape(s)
        assert cache_errors(metrics, "response_store") >= 3
        assert metrics[("cache_backend_up", (("backend", "response_store"),))] == 0

        disposable_redis.start()  # empty: no persistence
        await s.stub.Infer(ask(PROMPT))
        await stored(s)
        assert (await s.stub.Infer(ask(PROMPT))).cache.status == pb.CACHE_STATUS_EXACT
        metrics = await scrape(s)
        assert metrics[("cache_backend_up", (("backend", "response_store"),))] == 1


async def test_a_failing_embedder_fails_open_and_semantic_hits_resume(tmp_path: Path) -> None:
    embedder = WordEmbedder()
    async with stack(
        cache_mode="embedded",
        cache_dir=str(tmp_path),
        overrides={"embedder": embedder},
        similarity_threshold=0.8,  # bag-of-words vectors are less close than MiniLM's
        **SLACK,
    ) as s:
        await s.stub.Infer(ask("what is the capital of France"))
        await stored(s)
        embedder.broken = True
        answer = await s.stub.Infer(ask("what is the capital of France really"))
        assert answer.cache.status == pb.CACHE_STATUS_MISS
        assert answer.content.startswith("sim-")
        assert cache_errors(await scrape(s), "embedder") >= 1
        embedder.broken = False
        hit = await s.stub.Infer(ask("what exactly is the capital of France"))
        assert hit.cache.status == pb.CACHE_STATUS_SEMANTIC


async def test_cache_max_entries_evicts_the_least_recently_used_answers_with_their_vectors(
    tmp_path: Path,
) -> None:
    countries = ["France", "Spain", "Italy", "Germany", "Poland"]
    settings = {"cache_dir": str(tmp_path), "cache_max_entries": "3", **SLACK}
    async with stack(cache_mode="embedded", **settings) as s:
        for country in countries[:3]:
            await s.stub.Infer(ask(f"What is the capital of {country}?"))
            await stored(s)
        hit = await s.stub.Infer(ask("What is the capital of France?"))  # France: used last
        for country in countries[3:]:
            await s.stub.Infer(ask(f"What is the capital of {country}?"))
            await stored(s)

        container = s.proxy.container
        embedder, index = container.embedder(), container.vector_index()
        scope = cache_scope(
            InferenceRequest("gpt-4o-mini", (Message(Role.USER, PROMPT),)),
            "openai",
            embedder.identity,
        )
        (vector,) = await embedder.embed([PROMPT])
        for _ in range(100):  # the evicted answers' vectors go in the background
            texts = {m.text for m in await index.search(vector, scope, 0.0, 10)}
            if len(texts) <= 3:
                break
            await asyncio.sleep(0.05)
        france = await s.stub.Infer(ask("What exactly is the capital of France?"))
        spain = await s.stub.Infer(ask("What exactly is the capital of Spain?"))
    assert hit.cache.status == pb.CACHE_STATUS_EXACT
    assert texts == {f"What is the capital of {c}?" for c in ("France", "Germany", "Poland")}
    assert spain.cache.status == pb.CACHE_STATUS_MISS
    assert france.cache.status == pb.CACHE_STATUS_SEMANTIC
