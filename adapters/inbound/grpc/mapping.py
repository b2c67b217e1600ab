"""Protobuf messages <-> domain objects, and domain errors -> gRPC status."""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from adapters.inbound.failures import classify
from adapters.inbound.grpc.generated import proxy_pb2 as pb
from domain.errors import InvalidRequest, ProxyError
from domain.model import (
    Answer,
    CacheControl,
    CacheInfo,
    CacheStatus,
    FinishReason,
    InferenceRequest,
    Message,
    RequestLimits,
    Role,
    Usage,
)
from domain.usage import Budget, Spent

_ROLES = {pb.ROLE_SYSTEM: Role.SYSTEM, pb.ROLE_USER: Role.USER, pb.ROLE_ASSISTANT: Role.ASSISTANT}
_FINISH = {
    FinishReason.STOP: pb.FINISH_REASON_STOP,
    FinishReason.LENGTH: pb.FINISH_REASON_LENGTH,
    FinishReason.CONTENT_FILTER: pb.FINISH_REASON_CONTENT_FILTER,
    FinishReason.OTHER: pb.FINISH_REASON_OTHER,
}
_CACHE = {
    CacheStatus.MISS: pb.CACHE_STATUS_MISS,
    CacheStatus.EXACT: pb.CACHE_STATUS_EXACT,
    CacheStatus.SEMANTIC: pb.CACHE_STATUS_SEMANTIC,
    CacheStatus.BYPASS: pb.CACHE_STATUS_BYPASS,
}


def to_domain(
    request: pb.InferenceRequest, limits: RequestLimits | None = None, tenant: str = ""
) -> InferenceRequest:
    (limits or RequestLimits()).check(request.model, len(request.messages))
    if request.prompt and request.messages:
        raise InvalidRequest("give either prompt or messages, not both")
    if request.prompt:
        messages: tuple[Message, ...] = (Message(Role.USER, request.prompt),)
    else:
        messages = tuple(_message(i, m) for i, m in enumerate(request.messages))
    if request.max_tokens < 0:
        raise InvalidRequest(f"max_tokens must not be negative, got {request.max_tokens}")
    return InferenceRequest(
        model=request.model,
        messages=messages,
        temperature=request.temperature if request.HasField("temperature") else None,
        max_tokens=request.max_tokens or None,
        cache=CacheControl(request.cache.skip_lookup, request.cache.skip_store),
        tenant=tenant,
    )


def _message(index: int, message: pb.Message) -> Message:
    role = _ROLES.get(message.role)
    if role is None:
        raise InvalidRequest(
            f"messages[{index}].role must be ROLE_SYSTEM, ROLE_USER or ROLE_ASSISTANT"
        )
    return Message(role, message.content)


def usage(value: Usage) -> pb.Usage:
    return pb.Usage(input_tokens=value.input_tokens, output_tokens=value.output_tokens)


def cache_info(value: CacheInfo) -> pb.CacheInfo:
    return pb.CacheInfo(status=_CACHE[value.status], similarity=value.similarity)


def response(answer: Answer) -> pb.InferenceResponse:
    c = answer.completion
    return pb.InferenceResponse(
        content=c.content,
        model=c.model,
        provider=c.provider,
        finish_reason=_FINISH[c.finish_reason],
        usage=usage(c.usage),
        cache=cache_info(answer.cache),
        fallback_from=answer.fallback_from or "",
    )


def last_chunk(answer: Answer) -> pb.StreamChunk:
    c = answer.completion
    return pb.StreamChunk(
        done=True,
        finish_reason=_FINISH[c.finish_reason],
        usage=usage(c.usage),
        cache=cache_info(answer.cache),
        model=c.model,
        provider=c.provider,
        fallback_from=answer.fallback_from or "",
    )


@dataclass(frozen=True, slots=True)
class Status:
    code: grpc.StatusCode
    details: str
    retry_after: float | None = None

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        """When to retry: `retry-after-ms` for clients that read it, and the same figure as
        `grpc-retry-pushback-ms`, which gRPC's own retry policy obeys."""
        if self.retry_after is None:
            return ()
        ms = str(max(0, round(self.retry_after * 1000)))
        return (("retry-after-ms", ms), ("grpc-retry-pushback-ms", ms))


def status_of(error: ProxyError) -> Status:
    """The shared classification (adapters/inbound/failures.py) as a gRPC status: each kind is named
    after its status code."""
    failure = classify(error)
    return Status(grpc.StatusCode[failure.kind.name], failure.message, failure.retry_after)


def usage_report(spent: Spent, budget: Budget | None) -> pb.UsageResponse:
    return pb.UsageResponse(
        tenant=spent.tenant,
        window=spent.window.value,
        tokens=spent.tokens,
        budget=budget.tokens if budget is not None else None,
        resets_at=spent.resets_at.isoformat().replace("+00:00", "Z"),
        models=[
            pb.ModelUsage(
                model=model,
                prompt_tokens=kinds["prompt"],
                completion_tokens=kinds["completion"],
                saved_tokens=kinds["saved"],
                requests=kinds["requests"],
            )
            for model, kinds in spent.by_model().items()
        ],
    )
