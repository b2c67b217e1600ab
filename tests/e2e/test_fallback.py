"""MODEL_FALLBACKS end to end: real gRPC, the simulator as both providers, OpenAI failing."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import openai
import pytest

from adapters.inbound.grpc.generated import proxy_pb2 as pb
from simulator import SimulatorConfig
from tests.harness import OPENAI_KEYS, SLACK, Stack, scrape, stack

CHAIN = "gpt-4o=gemini-1.5-flash"
STEP = ("fallbacks_total", (("from", "gpt-4o"), ("to", "gemini-1.5-flash")))


def ask(prompt: str, model: str = "gpt-4o") -> pb.InferenceRequest:
    return pb.InferenceRequest(model=model, prompt=prompt)


def calls(s: Stack, endpoint: str) -> int:
    return s.sim.stats.by_endpoint.get(endpoint, 0)


async def test_every_openai_key_rejected_gemini_answers_and_its_answer_is_cached_as_its_own(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sim = SimulatorConfig(invalid_keys=frozenset(OPENAI_KEYS))
    cache = {"cache_mode": "embedded", "cache_dir": str(tmp_path), **SLACK}
    async with stack(sim, model_fallbacks=CHAIN, **cache) as s:
        with caplog.at_level(logging.INFO, logger="llm_proxy.requests"):
            first = await s.stub.Infer(ask("Name a prime number"))
        assert (first.provider, first.model) == ("gemini", "gemini-1.5-flash")
        assert first.fallback_from == "gpt-4o"
        assert first.cache.status == pb.CACHE_STATUS_MISS
        assert first.content.startswith("sim-")
        assert (await scrape(s))[STEP] == 1
        (line,) = [r for r in caplog.records if r.getMessage().startswith("request ok gpt-4o")]
        assert "(fallback: gemini gemini-1.5-flash)" in line.getMessage()
        assert calls(s, "openai.chat") == 2  # each key tried once, then disabled

        await s.proxy.container.inference().drain()
        again = await s.stub.Infer(ask("Name a prime number"))
        assert again.cache.status == pb.CACHE_STATUS_EXACT
        assert (again.provider, again.fallback_from, again.content) == (
            "gemini",
            "gpt-4o",
            first.content,
        )
        direct = await s.stub.Infer(ask("Name a prime number", model="gemini-1.5-flash"))
        assert direct.cache.status == pb.CACHE_STATUS_EXACT
        assert direct.fallback_from == ""
        assert calls(s, "gemini.generate") == 1
        assert (await scrape(s))[STEP] == 2


async def test_a_stream_falls_back_when_openai_keeps_failing() -> None:
    async with stack(SimulatorConfig(faults="503@openai"), model_fallbacks=CHAIN) as s:
        chunks = [c async for c in s.stub.InferStream(ask("Stream me a sentence"))]
        *deltas, last = chunks
        assert deltas
        assert all(c.content for c in deltas)
        assert last.done
        assert (last.provider, last.model, last.fallback_from) == (
            "gemini",
            "gemini-1.5-flash",
            "gpt-4o",
        )
        assert calls(s, "openai.chat.stream") == 4  # the first try and MAX_RETRIES=3
        assert calls(s, "gemini.stream") == 1
        samples = await scrape(s)
        assert samples[STEP] == 1
        attempts = (
            "upstream_attempts_total",
            (("outcome", "upstream_fault"), ("provider", "openai")),
        )
        assert samples[attempts] == 4


async def test_a_silent_openai_gives_way_to_gemini_at_upstream_timeout() -> None:
    # 1 s: under load a healthy gemini's first byte can take a few hundred ms
    settings = {"upstream_timeout": "1s", "request_timeout": "6s", "max_retries": 1}
    async with stack(
        SimulatorConfig(faults="stall@openai"), model_fallbacks=CHAIN, **settings
    ) as s:
        answer = await s.stub.Infer(ask("Are you there?"), timeout=10)
        assert (answer.provider, answer.fallback_from) == ("gemini", "gpt-4o")
        assert calls(s, "openai.chat") == 2
        samples = await scrape(s)
        assert samples[STEP] == 1
        silent = (
            "upstream_attempts_total",
            (("outcome", "upstream_fault"), ("provider", "openai")),
        )
        assert samples[silent] == 2


async def test_the_openai_http_api_falls_back_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sim = SimulatorConfig(invalid_keys=frozenset(OPENAI_KEYS))
    async with stack(sim, model_fallbacks=CHAIN, http=True) as s:
        client = openai.AsyncOpenAI(base_url=s.proxy.http_url, api_key="unused", max_retries=0)
        messages: list[Any] = [{"role": "user", "content": "Name a prime number"}]
        with caplog.at_level(logging.INFO, logger="llm_proxy.requests"):
            raw = await client.chat.completions.with_raw_response.create(
                model="gpt-4o", messages=messages
            )
        answer = raw.parse()
        assert answer.model == "gemini-1.5-flash"
        assert raw.headers["x-llm-proxy-provider"] == "gemini"
        assert raw.headers["x-llm-proxy-fallback-from"] == "gpt-4o"
        (line,) = [r for r in caplog.records if r.getMessage().startswith("request ok gpt-4o")]
        assert "(fallback: gemini gemini-1.5-flash)" in line.getMessage()

        stream = await client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "Stream a line"}], stream=True
        )
        chunks = [chunk async for chunk in stream]
        (finish,) = [c for c in chunks if c.choices and c.choices[0].finish_reason]
        assert finish.model == "gemini-1.5-flash"
        extension = (finish.model_extra or {})["llm_proxy"]
        assert (extension["provider"], extension["fallback_from"]) == ("gemini", "gpt-4o")
        assert (await scrape(s))[STEP] == 2
