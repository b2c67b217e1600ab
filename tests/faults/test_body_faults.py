"""Fault matrix, broken answers: truncated streams, malformed bodies, clients that leave."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from adapters.inbound.grpc.generated import proxy_pb2 as pb
from simulator import SimulatorConfig
from tests.fakes import WordEmbedder
from tests.faults.matrix import (
    MODELS,
    ask,
    chat_requests,
    collect,
    failure,
    metric_now,
    provider_of,
)
from tests.harness import SLACK, Stack, stack

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("model", MODELS)
async def test_a_stream_cut_before_the_first_chunk_is_retried_into_the_full_answer(
    model: str,
) -> None:
    async with stack(max_retries=2) as s:
        chunks: list[pb.StreamChunk] = []
        await collect(
            s.stub.InferStream(ask("Tell me a story. [[sim:truncate:0*1]]", model)), chunks
        )
        truncated = s.sim.stats.by_status["truncated"]
        unary = await s.stub.Infer(ask("Tell me a story.", model))
    *deltas, last = chunks
    assert truncated == 1
    assert last.done
    assert last.finish_reason == pb.FINISH_REASON_STOP
    assert "".join(d.content for d in deltas) == unary.content  # the whole answer, once


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("fault", ["truncate:2", "midstream:2", "stall:2"])
async def test_a_stream_broken_after_the_first_chunk_ends_with_an_error_status(
    model: str, fault: str
) -> None:
    # after a chunk reached the client there is no retry: an error status, never a short answer
    async with stack(max_retries=2, request_timeout="1s", openai_stream_idle_timeout="300ms",
                     gemini_stream_idle_timeout="300ms") as s:  # fmt: skip
        chunks: list[pb.StreamChunk] = []
        error = await failure(
            collect(s.stub.InferStream(ask(f"Tell me a story. [[sim:{fault}]]", model)), chunks)
        )
        attempts = chat_requests(s)
    assert error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    assert chunks  # some content came first...
    assert not any(c.done for c in chunks)  # ...and no final chunk pretends it was complete
    assert attempts == 1


# (fault marker, streamed?) for each kind of broken body; all answer HTTP 200
MALFORMED = {
    "invalid JSON": ("malformed", False),
    "HTML 200": ("html", False),
    "empty body": ("empty", False),
    "garbage": ("garbage", False),
    "HTML 200 to a stream": ("html", True),
    "empty stream": ("empty", True),
    "garbage SSE": ("garbage", True),
    "invalid JSON in an SSE event": ("malformed:1", True),
}


async def ask_broken(s: Stack, prompt: str, streamed: bool, model: str) -> pb.StreamChunk:
    if not streamed:
        response = await s.stub.Infer(ask(prompt, model))
        return pb.StreamChunk(content=response.content, done=True)
    chunks: list[pb.StreamChunk] = []
    await collect(s.stub.InferStream(ask(prompt, model)), chunks)
    return chunks[-1]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("case", list(MALFORMED))
async def test_a_malformed_body_is_a_clear_error_and_never_cached(
    case: str, model: str, tmp_path: Path
) -> None:
    fault, streamed = MALFORMED[case]
    prompt = f"Explain goroutines. [[sim:{fault}]]"
    async with stack(
        cache_mode="embedded",
        cache_dir=str(tmp_path),
        overrides={"embedder": WordEmbedder()},
        max_retries=1,
        **SLACK,
    ) as s:
        errors = []
        for _ in range(2):  # the second time must reach the upstream again: nothing was cached
            errors.append(await failure(ask_broken(s, prompt, streamed, model)))
            await s.proxy.container.inference().drain()
        upstream = chat_requests(s)
        healthy = await s.stub.Infer(ask("Explain goroutines.", model))
    assert [e.code() for e in errors] == [grpc.StatusCode.UNAVAILABLE] * 2
    details = errors[0].details() or ""
    assert provider_of(model) in details  # says who failed
    assert "Traceback" not in details
    assert "<html" not in details.lower()  # the upstream body is never passed through
    assert upstream >= 2
    assert healthy.content.startswith("sim-")  # the process is alive and serving


@pytest.mark.parametrize("model", MODELS)
async def test_an_html_answer_to_a_stream_is_malformed_not_truncated(model: str) -> None:
    async with stack(max_retries=0) as s:
        error = await failure(ask_broken(s, "Explain goroutines. [[sim:html]]", True, model))
    details = error.details() or ""
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "malformed" in details  # today: "stream ended before [DONE] (truncated)"
    assert "truncated" not in details


async def test_a_malformed_answer_is_not_retried_as_a_provider_outage() -> None:
    async with stack(max_retries=3, cb_failure_threshold=2) as s:
        await failure(s.stub.Infer(ask("Explain goroutines. [[sim:malformed]]")))
        attempts = chat_requests(s)
        healthy = await s.stub.Infer(ask("Explain channels."))
    assert attempts <= 2  # today: 4, each a breaker failure
    assert healthy.content.startswith("sim-")  # one bad body did not open the breaker


def established_to(port: int) -> int:
    """Open TCP connections (ESTABLISHED or CLOSE_WAIT) from this host to 127.0.0.1:`port`,
    from /proc/net/tcp: the proxy's side of its upstream connections."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        remote, state = fields[2], fields[3]
        if remote == f"0100007F:{port:04X}" and state in ("01", "08"):
            count += 1
    return count


async def test_client_cancel_of_50_streams_closes_their_upstream_connections() -> None:
    streams = 50
    sim = SimulatorConfig(chunk_delay_s=0.1, answer_words=200)
    async with stack(sim, upstream_max_connections=100) as s:
        port = int(s.sim.base_url.rsplit(":", 1)[1])
        calls = [s.stub.InferStream(ask(f"Long story number {i}.")) for i in range(streams)]
        firsts = await asyncio.gather(*(call.read() for call in calls))
        active = await metric_now(s, "active_requests")
        open_before = established_to(port)
        for call in calls:
            call.cancel()
        closed = await s.sim.stats.wait_until(
            lambda st: st.client_disconnects == streams and st.in_flight == 0, within_s=10
        )
        for _ in range(100):  # the server side finishes its cancelled handlers
            if await metric_now(s, "active_requests") == 0:
                break
            await asyncio.sleep(0.05)
        active_after = await metric_now(s, "active_requests")
        open_after = established_to(port)
        completed = s.sim.stats.streams_completed
    assert all(isinstance(f, pb.StreamChunk) for f in firsts)
    assert active == streams
    assert open_before == streams
    assert closed
    assert completed == 0
    assert active_after == 0
    assert open_after == 0


@pytest.mark.parametrize("model", MODELS)
async def test_an_answer_larger_than_max_response_bytes_is_an_error_not_unbounded(
    model: str,
) -> None:
    huge = "Tell me everything. [[sim:words:5000]]"  # tens of kilobytes, unary or streamed
    async with stack(max_response_bytes=4096, max_retries=0, cb_failure_threshold=10) as s:
        unary = await failure(s.stub.Infer(ask(huge, model)))
        chunks: list[pb.StreamChunk] = []
        streamed = await failure(collect(s.stub.InferStream(ask(huge, model)), chunks))
        healthy = await s.stub.Infer(ask("A short question.", model))
    for error in (unary, streamed):
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert "MAX_RESPONSE_BYTES" in (error.details() or "")  # names the setting to raise
    assert sum(len(c.content) for c in chunks) < 4096  # stopped at the bound
    assert not any(c.done for c in chunks)
    assert healthy.content.startswith("sim-")
