"""Fault matrix, unary rows: rate limits, 5xx, the circuit breaker, hangs and the connection pool.

Faults come from `[[sim:...]]` prompt markers (the proxy does not forward client headers); a
marker's `*N` budget is per conversation, so a retry of the same request shares it.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest

from adapters.inbound.grpc.generated import proxy_pb2 as pb
from simulator import key_fingerprint
from tests.fakes import WordEmbedder
from tests.faults.matrix import (
    GEMINI,
    MODELS,
    OPENAI,
    ask,
    chat_requests,
    collect,
    failure,
    metric_now,
    provider_of,
    trailer,
)
from tests.harness import GEMINI_KEYS, OPENAI_KEYS, stack

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("model", MODELS)
async def test_429_on_one_of_two_keys_is_answered_by_the_other(model: str) -> None:
    keys = OPENAI_KEYS if model == OPENAI else GEMINI_KEYS
    async with stack(max_retries=1) as s:
        answer = await s.stub.Infer(ask("Explain goroutines. [[sim:429:30*1]]", model))
        by_key = dict(s.sim.stats.by_key)
        faults = dict(s.sim.stats.faults)
    assert answer.content.startswith("sim-")
    assert faults == {"429": 1}
    assert by_key == {key_fingerprint(keys[0]): 1, key_fingerprint(keys[1]): 1}


async def test_every_key_429_is_resource_exhausted_with_retry_after_then_recovers() -> None:
    # Both keys get a 429 saying "retry after 2 s", longer than the 1 s deadline: the proxy
    # cannot wait for a key, so it says when to come back.
    async with stack(request_timeout="1s", max_retries=3) as s:
        error = await failure(s.stub.Infer(ask("Explain goroutines. [[sim:429:2*2]]")))
        retry_after_ms = int(trailer(error, "retry-after-ms") or -1)
        upstream_before = chat_requests(s)
        still_cooling = await failure(s.stub.Infer(ask("Another question.")))
        upstream_while_cooling = chat_requests(s)
        await asyncio.sleep(retry_after_ms / 1000)
        recovered = await s.stub.Infer(ask("Explain goroutines. [[sim:429:2*2]]"))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert 1000 < retry_after_ms <= 2000
    assert upstream_before == 2  # one attempt per key
    assert still_cooling.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert upstream_while_cooling == upstream_before  # refused without calling the provider
    assert recovered.content.startswith("sim-")


@pytest.mark.parametrize("model", MODELS)
async def test_a_burst_of_5xx_is_retried_into_an_answer(model: str) -> None:
    burst = "[[sim:500*1,503*1,502*1]]"  # three attempts fail, each with another status
    async with stack(max_retries=3, cb_failure_threshold=10) as s:
        answer = await s.stub.Infer(ask(f"Explain goroutines. {burst}", model))
        chunks: list[pb.StreamChunk] = []
        await collect(s.stub.InferStream(ask(f"Explain channels. {burst}", model)), chunks)
        statuses = dict(s.sim.stats.by_status)
    assert answer.content.startswith("sim-")
    assert chunks[-1].done
    assert "".join(c.content for c in chunks).startswith("sim-")
    assert statuses["500"] == statuses["503"] == statuses["502"] == 2
    assert statuses["200"] == 2


async def test_timed_out_unary_calls_do_not_leak_pool_connections() -> None:
    pool = 3
    async with stack(
        upstream_max_connections=pool,
        request_timeout="400ms",
        max_retries=0,
        cb_failure_threshold=100,  # this row is about the pool, not the breaker
    ) as s:
        timed_out = []
        for round_ in range(3):  # rounds of `pool` calls at once: each one times out
            timed_out += await asyncio.gather(
                *(
                    failure(s.stub.Infer(ask(f"Hang {round_}.{i}. [[sim:stall]]")))
                    for i in range(pool)
                )
            )
        # each abandoned upstream request was closed: the simulator saw its client leave
        released = await s.sim.stats.wait_until(lambda st: st.in_flight == 0, within_s=3)
        healthy = await s.stub.Infer(ask("A healthy question."), timeout=5)
    assert {e.code() for e in timed_out} == {grpc.StatusCode.DEADLINE_EXCEEDED}
    assert released
    assert healthy.content.startswith("sim-")


async def test_persistent_5xx_opens_the_breaker_then_a_success_closes_it() -> None:
    async with stack(cb_failure_threshold=2, cb_cooldown="1s", max_retries=0) as s:
        failures = [await failure(s.stub.Infer(ask(f"Broken {i}. [[sim:503]]"))) for i in range(2)]
        open_state = await metric_now(s, "circuit_breaker_state", provider="openai")
        attempts = chat_requests(s)
        rejected = await failure(s.stub.Infer(ask("A healthy question.")))
        rejected_upstream = chat_requests(s) - attempts
        await asyncio.sleep(1.05)  # CB_COOLDOWN: the next call is a probe
        probe = await s.stub.Infer(ask("A healthy question."))
        closed_state = await metric_now(s, "circuit_breaker_state", provider="openai")
        other = await s.stub.Infer(ask("Another healthy question."))
    assert [e.code() for e in failures] == [grpc.StatusCode.UNAVAILABLE] * 2
    assert open_state == 1
    assert rejected.code() == grpc.StatusCode.UNAVAILABLE
    assert "circuit breaker is open" in (rejected.details() or "")
    assert 0 < int(trailer(rejected, "retry-after-ms") or -1) <= 1000
    assert rejected_upstream == 0  # fast: refused without an upstream call
    assert probe.content.startswith("sim-")
    assert closed_state == 0
    assert other.content.startswith("sim-")


async def test_breaker_gauge_shows_half_open_after_the_cooldown_without_a_call() -> None:
    async with stack(cb_failure_threshold=1, cb_cooldown="500ms", max_retries=0) as s:
        await failure(s.stub.Infer(ask("Broken. [[sim:503]]", GEMINI)))
        opened = await metric_now(s, "circuit_breaker_state", provider="gemini")
        await asyncio.sleep(0.6)
        half_open = await metric_now(s, "circuit_breaker_state", provider="gemini")
    assert opened == 1
    assert half_open == 2


async def test_a_hang_ends_with_deadline_exceeded_within_request_timeout() -> None:
    async with stack(request_timeout="1s", max_retries=2, cb_failure_threshold=100) as s:
        chunks: list[pb.StreamChunk] = []
        stream_error = await failure(
            collect(s.stub.InferStream(ask("Hang. [[sim:stall:0]]", GEMINI)), chunks)
        )
        # the abandoned upstream stream was closed (unary calls: see the connection-leak row)
        closed = await s.sim.stats.wait_until(lambda st: st.in_flight == 0, within_s=3)
        started = time.monotonic()
        error = await failure(s.stub.Infer(ask("Hang. [[sim:stall]]", GEMINI)))
        elapsed = time.monotonic() - started
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert 0.9 <= elapsed < 3.0  # the deadline, not the upstream's 300 s stall
    assert stream_error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert chunks == []
    assert closed


@pytest.mark.parametrize("model", MODELS)
async def test_hangs_open_the_breaker(model: str) -> None:
    # REQUEST_TIMEOUT expiring on a silent provider is the provider's failure (DESIGN §4).
    # a cooldown no test can outlive: under load the 300 ms default can pass before the read
    async with stack(
        request_timeout="500ms", max_retries=0, cb_failure_threshold=2, cb_cooldown="60s"
    ) as s:
        hangs = [
            await failure(s.stub.Infer(ask(f"Hang {i}. [[sim:stall]]", model))) for i in (1, 2)
        ]
        attempts = chat_requests(s)
        rejected = await failure(s.stub.Infer(ask("A healthy question.", model)))
        rejected_upstream = chat_requests(s) - attempts
        state = await metric_now(s, "circuit_breaker_state", provider=provider_of(model))
    assert [e.code() for e in hangs] == [grpc.StatusCode.DEADLINE_EXCEEDED] * 2
    assert rejected.code() == grpc.StatusCode.UNAVAILABLE
    assert "circuit breaker is open" in (rejected.details() or "")
    assert rejected_upstream == 0
    assert state == 1


async def test_upstream_timeout_bounds_each_attempt_and_opens_the_breaker() -> None:
    async with stack(
        request_timeout="5s", upstream_timeout="300ms", max_retries=3, cb_failure_threshold=2
    ) as s:
        started = time.monotonic()
        error = await failure(s.stub.Infer(ask("Hang. [[sim:stall]]")))
        elapsed = time.monotonic() - started
        # counted by the proxy: under load the simulator may not have read the first request
        # before its 300 ms ran out
        timeouts = await metric_now(
            s, "upstream_attempts_total", provider="openai", outcome="upstream_fault"
        )
    assert elapsed < 3.5  # two attempts of 300 ms opened the breaker: not the 5 s deadline
    assert timeouts == 2
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "circuit breaker is open" in (error.details() or "")


@pytest.mark.parametrize("model", MODELS)
async def test_an_out_of_range_token_count_is_an_upstream_fault_and_never_cached(
    model: str, tmp_path: Path
) -> None:
    prompt = f"Explain goroutines. [[sim:tokens:{2**40}]]"  # a hostile upstream's usage
    async with stack(
        cache_mode="embedded",
        cache_dir=str(tmp_path),
        overrides={"embedder": WordEmbedder()},
        max_retries=0,
        cb_failure_threshold=10,
        cache_timeout="3s",
    ) as s:
        errors = []
        for _ in range(2):
            errors.append(await failure(s.stub.Infer(ask(prompt, model))))
            await s.proxy.container.inference().drain()
        upstream = chat_requests(s)
        healthy = await s.stub.Infer(ask("Explain goroutines.", model))
    assert [e.code() for e in errors] == [grpc.StatusCode.UNAVAILABLE] * 2
    assert "token" in (errors[0].details() or "").lower()
    assert upstream == 2  # the bad answer was not stored
    assert healthy.usage.input_tokens == 2


async def test_streams_still_producing_at_request_timeout_do_not_open_the_breaker() -> None:
    # the repro: 5 healthy streams cut by the proxy's own REQUEST_TIMEOUT opened the breaker
    async with stack(request_timeout="1s", max_retries=0, cb_failure_threshold=2) as s:
        for i in range(5):
            chunks: list[pb.StreamChunk] = []
            error = await failure(
                collect(s.stub.InferStream(ask(f"Story {i}. [[sim:slow:100,words:200]]")), chunks)
            )
            assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert chunks  # it was answering
        state = await metric_now(s, "circuit_breaker_state", provider="openai")
        cut = await metric_now(
            s, "upstream_attempts_total", provider="openai", outcome="cut_by_deadline"
        )
        healthy = await s.stub.Infer(ask("A healthy question."))
    assert state == 0
    assert cut == 5
    assert healthy.content.startswith("sim-")


async def test_waiting_for_the_proxys_own_full_pool_until_the_deadline_is_neutral() -> None:
    # the repro: pool of 2, 8 concurrent calls longer than half the deadline: the 6 that waited
    # for a connection timed out and opened the breaker
    async with stack(
        request_timeout="1500ms", upstream_max_connections=2, max_retries=0, cb_failure_threshold=2
    ) as s:
        calls = [s.stub.Infer(ask(f"Question {i}. [[sim:delay:1000]]")) for i in range(8)]
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        busy = await metric_now(
            s, "upstream_attempts_total", provider="openai", outcome="proxy_busy"
        )
        state = await metric_now(s, "circuit_breaker_state", provider="openai")
        healthy = await s.stub.Infer(ask("A healthy question."))
    answered = [o for o in outcomes if isinstance(o, pb.InferenceResponse)]
    timed_out = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert len(answered) >= 2  # the two that had connections
    assert all(e.code() == grpc.StatusCode.DEADLINE_EXCEEDED for e in timed_out)
    assert busy == len(timed_out)  # every one of them queued first
    assert state == 0
    assert healthy.content.startswith("sim-")
