"""The local MiniLM (an onnxruntime graph built from the bundled weights) against vectors
sentence-transformers (PyTorch) made for the same texts.

tests/fixtures/minilm_reference.json comes from scripts/make_minilm_reference.py. The float32
graph matches it to 1e-5 per component (measured: 6e-7; the fixture is rounded to 6 decimals),
which proves the graph is the model. The embedder runs the int8 graph: its vectors are within a
cosine of 0.99 of the reference, text by text (measured: 0.9922 to 0.9987 on the fixture, 0.9931
at worst over the 1,225 calibration texts), not equal to it, hence an identity of its own.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from adapters.outbound.embedders.local import (
    MAX_TOKENS,
    LocalMiniLMEmbedder,
    MiniLM,
    bundled_model_dir,
)

REFERENCE = Path(__file__).resolve().parents[1] / "fixtures" / "minilm_reference.json"


@pytest.fixture(scope="module")
def embedder() -> Iterator[LocalMiniLMEmbedder]:
    local = LocalMiniLMEmbedder()
    local.model()  # loaded once for the module (about a second)
    yield local
    local.close()


@pytest.fixture(scope="module")
def reference() -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = json.loads(REFERENCE.read_text())["items"]
    return items


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = math.fsum(x * y for x, y in zip(a, b, strict=True))
    return dot / math.sqrt(math.fsum(x * x for x in a) * math.fsum(y * y for y in b))


def max_diff(a: Sequence[float], b: Sequence[float]) -> float:
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


def test_identity_and_dimension() -> None:
    # not the float32 vectors' `local:all-MiniLM-L6-v2`: the two must not share an index
    assert LocalMiniLMEmbedder.identity == "local:all-MiniLM-L6-v2:int8"
    assert LocalMiniLMEmbedder.dimension == 384


def test_an_explicit_model_dir_is_accepted_and_a_wrong_one_refused(tmp_path: Path) -> None:
    assert LocalMiniLMEmbedder(bundled_model_dir()).model_dir == bundled_model_dir()
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors"):
        LocalMiniLMEmbedder(tmp_path)


def test_the_float32_graph_is_sentence_transformers(reference: list[dict[str, Any]]) -> None:
    float32 = MiniLM(bundled_model_dir(), quantized=False)
    vectors = float32.encode([item["text"] for item in reference]).tolist()
    assert len(vectors) == len(reference) >= 8
    for item, vector in zip(reference, vectors, strict=True):
        assert len(vector) == 384
        assert cosine(vector, item["vector"]) >= 0.9999, item["text"][:40]
        assert max_diff(vector, item["vector"]) < 1e-5, item["text"][:40]


async def test_the_int8_vectors_stay_within_a_cosine_of_0_99_of_sentence_transformers(
    embedder: LocalMiniLMEmbedder, reference: list[dict[str, Any]]
) -> None:
    vectors = await embedder.embed([item["text"] for item in reference])
    assert len(vectors) == len(reference) >= 8
    for item, vector in zip(reference, vectors, strict=True):
        assert len(vector) == 384
        assert cosine(vector, item["vector"]) >= 0.99, item["text"][:40]
    # quantised: close, not equal (why the identity differs from the float32 one's)
    assert max(max_diff(v, i["vector"]) for v, i in zip(vectors, reference, strict=True)) > 1e-3


def test_a_vector_is_the_same_alone_and_in_any_batch(
    embedder: LocalMiniLMEmbedder, reference: list[dict[str, Any]]
) -> None:
    """Activations are quantised per token, never per pass: shorter and longer companions
    (padding, other scales) change no bit of a text's vector."""
    model = embedder.model()
    texts = ["short", "a much longer sentence, padded to by the short one", "x y z"]
    texts += [item["text"] for item in reference[:3]]
    ids = model.token_ids(texts)
    assert len({len(x) for x in ids}) == len(ids)  # every length differs
    together = model._forward(ids)  # one pass, everything padded to the longest
    pairs = model._forward([ids[0], ids[-1]])
    for row, token_ids in enumerate(ids):
        alone = model._forward([token_ids])[0]
        assert together[row].tobytes() == alone.tobytes(), texts[row][:40]
    assert pairs[0].tobytes() == together[0].tobytes()
    assert pairs[1].tobytes() == together[-1].tobytes()


def test_the_model_runs_on_one_thread(embedder: LocalMiniLMEmbedder) -> None:
    options = embedder.model().session.get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (1, 1)


async def test_long_texts_are_truncated_to_256_word_pieces(
    embedder: LocalMiniLMEmbedder, reference: list[dict[str, Any]]
) -> None:
    long = max(reference, key=lambda item: item["tokens_before_truncation"])
    assert long["tokens_before_truncation"] > MAX_TOKENS
    assert [len(ids) for ids in embedder.model().token_ids([long["text"]])] == [MAX_TOKENS]
    longer = long["text"] + " Whatever comes after the cut changes nothing."
    original, extended = await embedder.embed([long["text"], longer])
    assert max_diff(original, extended) < 1e-6


def test_the_window_is_counted_in_word_pieces_with_the_special_tokens(
    embedder: LocalMiniLMEmbedder, reference: list[dict[str, Any]]
) -> None:
    assert embedder.input_window == MAX_TOKENS == 256
    # "hello" is one word-piece: 254 of them and [CLS] [SEP] fill the window exactly
    assert embedder.fits("hello " * 254)
    assert not embedder.fits("hello " * 255)
    # "unbelievably" is several word-pieces: fewer words overflow
    assert not embedder.fits("unbelievably " * 100)
    long = max(reference, key=lambda item: item["tokens_before_truncation"])
    assert not embedder.fits(long["text"])
    assert embedder.fits("What is the capital of France?")


async def test_vectors_have_unit_length(embedder: LocalMiniLMEmbedder) -> None:
    for vector in await embedder.embed(["a", "", "Unit length, always.", "🚀" * 300]):
        assert math.sqrt(math.fsum(x * x for x in vector)) == pytest.approx(1.0, abs=1e-5)


async def test_a_batch_gives_what_one_by_one_gives(
    embedder: LocalMiniLMEmbedder, reference: list[dict[str, Any]]
) -> None:
    texts = [item["text"] for item in reference] + ["short", "a little longer sentence"]
    together = await embedder.embed(texts)
    for text, vector in zip(texts, together, strict=True):
        [alone] = await embedder.embed([text])
        assert vector == alone, text[:40]


async def test_small_batches_keep_the_input_order() -> None:
    small = LocalMiniLMEmbedder(batch_size=2)
    texts = ["zebra", "a much longer text than the others, to be sorted last", "x", "hello there"]
    try:
        vectors = await small.embed(texts)
        for text, vector in zip(texts, vectors, strict=True):
            [alone] = await small.embed([text])
            assert vector == alone
    finally:
        small.close()


async def test_the_same_text_gives_the_same_vector(embedder: LocalMiniLMEmbedder) -> None:
    first = await embedder.embed(["Determinism, please."])
    second = await embedder.embed(["Determinism, please."])
    assert first == second


async def test_paraphrases_are_closer_than_unrelated_sentences(
    embedder: LocalMiniLMEmbedder,
) -> None:
    question, paraphrase, unrelated = await embedder.embed(
        [
            "What is the capital of France?",
            "Which city is the capital of France?",
            "How do I bake sourdough bread at home?",
        ]
    )
    assert cosine(question, paraphrase) > 0.9
    assert cosine(question, unrelated) < 0.3


async def test_no_texts_no_vectors(embedder: LocalMiniLMEmbedder) -> None:
    assert await embedder.embed([]) == []


async def test_the_event_loop_keeps_running_while_it_embeds(
    embedder: LocalMiniLMEmbedder,
) -> None:
    ticks = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            await asyncio.sleep(0.001)
            ticks += 1

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    await embedder.embed([f"sentence number {i} of a longer batch to embed" for i in range(48)])
    done.set()
    await task
    assert ticks >= 5


async def test_cancelling_a_queued_call_leaves_the_embedder_working(
    embedder: LocalMiniLMEmbedder,
) -> None:
    running = asyncio.create_task(embedder.embed([f"text {i} in a batch" for i in range(32)]))
    queued = asyncio.create_task(embedder.embed(["cancelled before it runs"]))
    await asyncio.sleep(0)
    queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await queued
    assert len(await running) == 32
    assert len(await embedder.embed(["and the next call runs"])) == 1
