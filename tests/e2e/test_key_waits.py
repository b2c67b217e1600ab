"""One rule for waiting on a key, through real gRPC and the simulator: a request that finds every
key cooling down waits for the earliest reset exactly as one that just got the last 429 does."""

from __future__ import annotations

import asyncio

from adapters.inbound.grpc.generated import proxy_pb2 as pb
from tests.harness import stack


async def test_a_request_finding_every_key_cooling_waits_for_the_reset_like_after_a_429() -> None:
    async with stack() as s:
        # both keys answer 429 "retry after 0.5 s" to this prompt, then it succeeds
        limited = asyncio.ensure_future(
            s.stub.Infer(pb.InferenceRequest(model="gpt-4o-mini", prompt="[[sim:429:0.5*2]] a"))
        )
        assert await s.sim.stats.wait_until(lambda st: st.by_status.get("429", 0) == 2)
        # every key is cooling down now: this request must wait, not fail
        late = await s.stub.Infer(pb.InferenceRequest(model="gpt-4o-mini", prompt="b"), timeout=5)
        first = await limited
    assert first.content.startswith("sim-")
    assert late.content.startswith("sim-")
