"""The API over a real grpc.aio server on loopback, with fake providers swapped in."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from adapters.inbound.grpc.generated import proxy_pb2 as pb
from domain.errors import KeyRejected, RateLimited, UpstreamFault, UpstreamRejected
from domain.model import MAX_INPUT_CHARS
from tests.fakes import Fail, Hang, Reply
from tests.integration.conftest import Proxy, running_proxy

pytestmark = pytest.mark.integration


def ask(prompt: str = "Explain goroutines in one paragraph.", **kw: object) -> pb.InferenceRequest:
    return pb.InferenceRequest(model=kw.pop("model", "gpt-4"), prompt=prompt, **kw)  # type: ignore[arg-type]


async def status_of(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value


async def test_unary_infer(proxy: Proxy) -> None:
    proxy.openai.then(Reply("Goroutines are light threads."))
    response = await proxy.stub.Infer(ask(temperature=0.0, max_tokens=256))
    assert response.content == "Goroutines are light threads."
    assert response.provider == "openai"
    assert response.model == "gpt-4"
    assert response.finish_reason == pb.FINISH_REASON_STOP
    assert response.usage.output_tokens == 4
    assert response.cache.status == pb.CACHE_STATUS_BYPASS
    sent = proxy.openai.calls[0].request
    assert sent.temperature == 0.0  # explicitly zero, not "unset"
    assert sent.max_tokens == 256


async def test_temperature_unset_reaches_the_provider_as_unset(proxy: Proxy) -> None:
    await proxy.stub.Infer(ask())
    assert proxy.openai.calls[0].request.temperature is None
    assert proxy.openai.calls[0].request.max_tokens is None


async def test_chat_messages_with_a_system_prompt(proxy: Proxy) -> None:
    request = pb.InferenceRequest(
        model="gemini-2.0-flash",
        messages=[
            pb.Message(role=pb.ROLE_SYSTEM, content="Be brief."),
            pb.Message(role=pb.ROLE_USER, content="Hi"),
        ],
    )
    response = await proxy.stub.Infer(request)
    assert response.provider == "gemini"
    assert proxy.gemini.calls[0].request.system == "Be brief."


async def test_streamed_infer(proxy: Proxy) -> None:
    proxy.gemini.then(Reply("a haiku here", chunks=("a ", "haiku ", "here")))
    chunks = [c async for c in proxy.stub.InferStream(ask(model="gemini-pro"))]
    assert [c.content for c in chunks[:-1]] == ["a ", "haiku ", "here"]
    last = chunks[-1]
    assert last.done
    assert last.finish_reason == pb.FINISH_REASON_STOP
    assert last.usage.output_tokens == 3
    assert last.provider == "gemini"
    assert not any(c.done for c in chunks[:-1])


@pytest.mark.parametrize(
    ("request_", "fix"),
    [
        (pb.InferenceRequest(model="gpt-4"), "give a prompt or at least one message"),
        (pb.InferenceRequest(model="gpt-4", prompt="   "), "is empty"),
        (pb.InferenceRequest(prompt="hi"), "model is required"),
        (
            pb.InferenceRequest(
                model="gpt-4", prompt="hi", messages=[pb.Message(role=pb.ROLE_USER, content="x")]
            ),
            "either prompt or messages",
        ),
        (pb.InferenceRequest(model="gpt-4", prompt="hi", max_tokens=-1), "must not be negative"),
        (pb.InferenceRequest(model="gpt-4", prompt="hi", max_tokens=10**9), "max_tokens must be"),
        (pb.InferenceRequest(model="gpt-4", prompt="hi", temperature=2.5), "within [0, 2]"),
        (
            pb.InferenceRequest(model="gpt-4", messages=[pb.Message(content="no role")]),
            "role must be",
        ),
        (pb.InferenceRequest(model="gpt-4", prompt="x" * (MAX_INPUT_CHARS + 1)), "the limit is"),
    ],
)
async def test_invalid_requests_say_what_to_fix(
    proxy: Proxy, request_: pb.InferenceRequest, fix: str
) -> None:
    for call in (proxy.stub.Infer(request_), _drain(proxy.stub.InferStream(request_))):
        error = await status_of(call)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert fix in (error.details() or "")
    assert proxy.openai.calls == []


async def _drain(call: object) -> None:
    async for _ in call:  # type: ignore[attr-defined]
        pass


async def test_a_request_over_the_size_limit_is_refused() -> None:
    async with running_proxy(max_request_bytes=64 * 1024) as proxy:
        error = await status_of(proxy.stub.Infer(ask("x" * 100_000)))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert proxy.openai.calls == []


async def test_unknown_model_is_not_found_and_lists_routable_models(proxy: Proxy) -> None:
    error = await status_of(proxy.stub.Infer(ask(model="llama-3")))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "gpt-*" in (error.details() or "")
    assert "gemini-*" in (error.details() or "")


async def test_a_provider_without_keys_is_not_routable() -> None:
    async with running_proxy(gemini_api_keys="") as proxy:
        error = await status_of(proxy.stub.Infer(ask(model="gemini-pro")))
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert "no API keys" in (error.details() or "")


async def test_429_on_one_key_is_served_by_the_next(proxy: Proxy) -> None:
    proxy.openai.then(Fail(RateLimited("rate limited", retry_after=30.0)), Reply("second key"))
    response = await proxy.stub.Infer(ask())
    assert response.content == "second key"
    assert proxy.openai.calls[0].key != proxy.openai.calls[1].key


async def test_every_key_limited_is_resource_exhausted_with_when_to_retry(proxy: Proxy) -> None:
    proxy.openai.then(
        Fail(RateLimited("rate limited", retry_after=120.0)),
        Fail(RateLimited("rate limited", retry_after=60.0)),
    )
    error = await status_of(proxy.stub.Infer(ask()))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "retry after 60" in (error.details() or "")
    trailers = dict(error.trailing_metadata() or ())
    assert 59_000 <= int(trailers["retry-after-ms"]) <= 60_000


async def test_every_key_rejected_is_unavailable_and_names_keys_by_fingerprint_only(
    proxy: Proxy, caplog: pytest.LogCaptureFixture
) -> None:
    proxy.openai.then(Fail(KeyRejected("invalid api key")), Fail(KeyRejected("invalid api key")))
    error = await status_of(proxy.stub.Infer(ask()))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "sk-test" not in (error.details() or "")
    assert "sk-test" not in caplog.text
    assert {r.key for r in caplog.records if hasattr(r, "key")} == {
        c.key for c in proxy.openai.calls
    }


async def test_upstream_client_error_is_invalid_argument_without_retry(proxy: Proxy) -> None:
    proxy.openai.then(Fail(UpstreamRejected("openai rejected the request: context too long")))
    error = await status_of(proxy.stub.Infer(ask()))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "context too long" in (error.details() or "")
    assert len(proxy.openai.calls) == 1


async def test_breaker_opens_fails_fast_and_recovers_through_half_open() -> None:
    async with running_proxy(cb_failure_threshold=2, max_retries=0) as proxy:
        proxy.openai.then(Fail(UpstreamFault("503")), Fail(UpstreamFault("503")))
        for _ in range(2):
            error = await status_of(proxy.stub.Infer(ask()))
            assert error.code() == grpc.StatusCode.UNAVAILABLE
        started = time.monotonic()
        error = await status_of(proxy.stub.Infer(ask()))
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert "circuit breaker is open" in (error.details() or "")
        assert time.monotonic() - started < 0.25
        assert len(proxy.openai.calls) == 2
        await asyncio.sleep(0.35)  # CB_COOLDOWN 300ms: the next call is the half-open probe
        response = await proxy.stub.Infer(ask("probe"))
        assert response.content == "echo: probe"
        await proxy.stub.Infer(ask("closed again"))
        assert len(proxy.openai.calls) == 4


async def test_retries_stop_at_the_client_deadline() -> None:
    async with running_proxy(
        max_retries=20, retry_wait_initial="50ms", retry_wait_max="100ms", cb_failure_threshold=50
    ) as proxy:
        proxy.openai.then(*[Fail(UpstreamFault("500"))] * 21)
        started = time.monotonic()
        error = await status_of(proxy.stub.Infer(ask(), timeout=0.6))
        elapsed = time.monotonic() - started
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert elapsed < 1.0
        assert 2 <= len(proxy.openai.calls) < 21


async def test_request_timeout_bounds_a_slow_upstream() -> None:
    async with running_proxy(request_timeout="300ms") as proxy:
        proxy.openai.then(Hang())
        error = await status_of(proxy.stub.Infer(ask()))
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert proxy.openai.cancelled == 1


@pytest.mark.parametrize("rpc", ["Infer", "InferStream"])
async def test_client_cancel_cancels_the_upstream_call(proxy: Proxy, rpc: str) -> None:
    proxy.openai.then(Hang())
    call = getattr(proxy.stub, rpc)(ask())
    await asyncio.wait_for(proxy.openai.entered.wait(), 5)
    call.cancel()
    for _ in range(100):
        if proxy.openai.cancelled:
            break
        await asyncio.sleep(0.01)
    assert proxy.openai.cancelled == 1


async def test_two_identical_concurrent_requests_cost_one_upstream_call(proxy: Proxy) -> None:
    proxy.openai.gate = asyncio.Event()
    calls = [proxy.stub.Infer(ask("same question")) for _ in range(2)]
    await asyncio.wait_for(proxy.openai.entered.wait(), 5)
    await asyncio.sleep(0.05)
    proxy.openai.gate.set()
    first, second = await asyncio.gather(*calls)
    assert first.content == second.content == "echo: same question"
    assert len(proxy.openai.calls) == 1


async def test_stream_failure_after_first_chunk_ends_with_an_error_status(proxy: Proxy) -> None:
    proxy.openai.then(Reply("a b", chunks=("a", "b"), fail_after_chunks=UpstreamFault("reset")))
    received: list[str] = []

    async def consume() -> None:
        async for chunk in proxy.stub.InferStream(ask()):
            received.append(chunk.content)

    error = await status_of(consume())
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert received == ["a", "b"]
    assert len(proxy.openai.calls) == 1


async def test_unexpected_errors_are_internal_without_details(
    proxy: Proxy, caplog: pytest.LogCaptureFixture
) -> None:
    proxy.openai.then(Fail(RuntimeError("boom with sk-secret-value")))  # type: ignore[arg-type]
    error = await status_of(proxy.stub.Infer(ask()))
    assert error.code() == grpc.StatusCode.INTERNAL
    assert error.details() == "internal error"
    assert "failed unexpectedly" in caplog.text
    # the server survives
    assert (await proxy.stub.Infer(ask("still alive"))).content == "echo: still alive"


async def test_auth_tokens_require_a_bearer_token() -> None:
    async with running_proxy(auth_tokens="tok-alpha,tok-beta") as proxy:
        error = await status_of(proxy.stub.Infer(ask()))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        error = await status_of(proxy.stub.Infer(ask(), metadata=(("authorization", "Bearer no"),)))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "tok-" not in (error.details() or "")
        ok = await proxy.stub.Infer(ask(), metadata=(("authorization", "Bearer tok-beta"),))
        assert ok.content
        health = health_pb2_grpc.HealthStub(proxy.channel)
        reply = await health.Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_health_reports_serving_for_the_service(proxy: Proxy) -> None:
    health = health_pb2_grpc.HealthStub(proxy.channel)
    for service in ("", "inferenceproxy.InferenceService"):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


GRPCURL = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or shutil.which("grpcurl")


async def _grpcurl(*args: str) -> tuple[int, str, str]:
    assert GRPCURL is not None
    process = await asyncio.create_subprocess_exec(
        GRPCURL, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 20)
    return process.returncode or 0, out.decode(), err.decode()


@pytest.mark.skipif(GRPCURL is None, reason="grpcurl is not installed (make setup installs it)")
async def test_grpcurl_lists_services_and_runs_the_predecessor_example(proxy: Proxy) -> None:
    address = f"127.0.0.1:{proxy.port}"
    code, out, _ = await _grpcurl("-plaintext", address, "list")
    assert code == 0
    assert "inferenceproxy.InferenceService" in out
    assert "grpc.health.v1.Health" in out
    body = {
        "model": "gpt-4",
        "prompt": "Explain goroutines in one paragraph.",
        "temperature": 0.7,
        "max_tokens": 256,
    }
    code, out, err = await _grpcurl(
        "-plaintext", "-d", json.dumps(body), address, "inferenceproxy.InferenceService/Infer"
    )
    assert code == 0, err
    reply = json.loads(out)
    assert reply["content"] == "echo: Explain goroutines in one paragraph."
    assert reply["cache"]["status"] == "CACHE_STATUS_BYPASS"
    assert reply["finish_reason"] == "FINISH_REASON_STOP"  # as README shows it: snake_case
    assert set(reply["usage"]) <= {"input_tokens", "output_tokens"}
    code, out, err = await _grpcurl(
        "-plaintext", address, "describe", "grpc.reflection.v1.ServerReflection"
    )
    assert code == 0, err
    assert "rpc ServerReflectionInfo" in out
    assert proxy.openai.calls[0].request.temperature == pytest.approx(0.7)


async def test_health_watch_streams_the_status_and_its_changes(proxy: Proxy) -> None:
    """grpcio's client-side health checking (and Envoy, Linkerd) use Watch, not Check."""
    health = health_pb2_grpc.HealthStub(proxy.channel)
    watch = health.Watch(health_pb2.HealthCheckRequest(service="inferenceproxy.InferenceService"))
    first = await asyncio.wait_for(watch.read(), 5)
    assert first.status == health_pb2.HealthCheckResponse.SERVING
    server = proxy.container.grpc_server()
    await server.health.set(
        "inferenceproxy.InferenceService", health_pb2.HealthCheckResponse.NOT_SERVING
    )
    changed = await asyncio.wait_for(watch.read(), 5)
    assert changed.status == health_pb2.HealthCheckResponse.NOT_SERVING
    watch.cancel()


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
async def test_reflection_is_served_in_both_versions(proxy: Proxy, version: str) -> None:
    from grpc_reflection.v1alpha import reflection_pb2 as messages  # wire-identical in v1

    call = proxy.channel.stream_stream(
        f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
        request_serializer=messages.ServerReflectionRequest.SerializeToString,
        response_deserializer=messages.ServerReflectionResponse.FromString,
    )(iter([messages.ServerReflectionRequest(list_services="")]))
    reply = await asyncio.wait_for(call.read(), 5)
    names = {s.name for s in reply.list_services_response.service}
    assert {"inferenceproxy.InferenceService", "grpc.reflection.v1.ServerReflection"} <= names
    call = proxy.channel.stream_stream(
        f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
        request_serializer=messages.ServerReflectionRequest.SerializeToString,
        response_deserializer=messages.ServerReflectionResponse.FromString,
    )(
        iter(
            [
                messages.ServerReflectionRequest(
                    file_containing_symbol=f"grpc.reflection.{version}.ServerReflection"
                )
            ]
        )
    )
    reply = await asyncio.wait_for(call.read(), 5)
    assert reply.file_descriptor_response.file_descriptor_proto, reply
