"""What a hostile request costs the event loop before it is refused: 550,000 one-character
messages (3.85 MB, under MAX_REQUEST_BYTES) and a 3 MB model name, mapped to the domain with and
without the MAX_MESSAGES / MAX_MODEL_NAME_LENGTH bounds; over HTTP, 130,000 messages and one
message of 150,000 content parts, validated whole (pydantic) or counted first (protocol.parse).
One pass each; prints milliseconds.

    .venv/bin/python benchmarks/input_bounds.py
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.inbound.grpc import mapping
from adapters.inbound.grpc.generated import proxy_pb2 as pb
from adapters.inbound.http import protocol
from domain.errors import InvalidRequest
from domain.model import RequestLimits

UNBOUNDED = RequestLimits(max_model_name=10**9, max_messages=10**9)


def timed(request: pb.InferenceRequest, limits: RequestLimits) -> tuple[float, str]:
    started = time.perf_counter()
    try:
        mapping.to_domain(request, limits)
        outcome = "accepted"
    except InvalidRequest as error:
        outcome = f"refused: {str(error)[:60]}"
    return (time.perf_counter() - started) * 1000, outcome


def main() -> None:
    one = pb.Message(role=pb.ROLE_USER, content="x")
    cases = {
        "550k messages": pb.InferenceRequest(model="gpt-4", messages=[one] * 550_000),
        "3 MB model name": pb.InferenceRequest(model="g" * 3_000_000, prompt="hi"),
    }
    for name, request in cases.items():
        wire = request.SerializeToString()
        started = time.perf_counter()
        parsed = pb.InferenceRequest.FromString(wire)
        parse_ms = (time.perf_counter() - started) * 1000
        print(f"{name}: {len(wire) / 1e6:.2f} MB, protobuf parse {parse_ms:.0f} ms")
        for label, limits in (("no bounds", UNBOUNDED), ("default bounds", RequestLimits())):
            ms, outcome = timed(parsed, limits)
            print(f"  to_domain with {label}: {ms:8.1f} ms  ({outcome})")


def http_cases() -> None:
    parts = [{"type": "text", "text": "a"}] * 150_000
    bodies = {
        "130k messages": {"messages": [{"role": "user", "content": "a"}] * 130_000},
        "150k content parts": {"messages": [{"role": "user", "content": parts}]},
    }
    for name, fields in bodies.items():
        body = json.dumps({"model": "gpt-4o", **fields}).encode()
        started = time.perf_counter()
        protocol.ChatCompletionRequest.model_validate_json(body)
        whole_ms = (time.perf_counter() - started) * 1000
        started = time.perf_counter()
        try:
            protocol.parse(body, RequestLimits())
            outcome = "accepted"
        except InvalidRequest as error:
            outcome = f"refused: {str(error)[:50]}"
        counted_ms = (time.perf_counter() - started) * 1000
        print(f"HTTP {name}: {len(body) / 1e6:.2f} MB, validated whole {whole_ms:.0f} ms, "
              f"counted first {counted_ms:.0f} ms ({outcome})")  # fmt: skip


if __name__ == "__main__":
    main()
    http_cases()
