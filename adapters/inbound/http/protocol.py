"""OpenAI's chat-completions wire format as pydantic models, and its mapping to and from the
domain. Only what we serve: chat completions (plain and streamed), embeddings, the model list,
errors.

Unknown request fields are ignored (as vLLM and most OpenAI-compatible servers do), except the
OpenAI parameters in UNSUPPORTED: set to anything but their neutral value they would change the
answer, so they are refused with a 400 naming them rather than silently dropped."""

from __future__ import annotations

import base64
import struct
from typing import Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
)
from pydantic_core import from_json

from domain.errors import InvalidRequest
from domain.model import (
    MAX_OUTPUT_TOKENS,
    Answer,
    CacheControl,
    EmbeddingRequest,
    Embeddings,
    FinishReason,
    InferenceRequest,
    Message,
    RequestLimits,
    Role,
    Usage,
)
from domain.usage import Budget, Spent

_ROLES = {
    "system": Role.SYSTEM,
    "developer": Role.SYSTEM,  # OpenAI's newer name for the system prompt
    "user": Role.USER,
    "assistant": Role.ASSISTANT,
}
# parameter -> its neutral values (absent, null and these are accepted)
UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "tools": ([],),
    "functions": ([],),
    "tool_choice": ("none",),
    "function_call": ("none",),
    "response_format": ({"type": "text"},),
    "logprobs": (False,),
    "top_logprobs": (0,),
    "stop": ([], ""),
    "logit_bias": ({},),
    "audio": (),
    "modalities": (["text"],),
    "prediction": (),
}
_UNION_TAGS = {"str", "int", "float", "bool", "none"}
_FINISH = {
    FinishReason.STOP: "stop",
    FinishReason.LENGTH: "length",
    FinishReason.CONTENT_FILTER: "content_filter",
    FinishReason.OTHER: "stop",
}


class _Loose(BaseModel):
    model_config = ConfigDict(extra="allow")


class ContentPart(_Loose):
    type: str
    text: str | None = None


class ChatMessage(_Loose):
    role: str
    content: str | list[ContentPart] | None = None


class StreamOptions(_Loose):
    include_usage: bool = False


class ChatCompletionRequest(_Loose):
    model: str
    messages: list[ChatMessage]
    temperature: float | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    n: int | None = None

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def to_domain(
        self, limits: RequestLimits, tenant: str, cache: CacheControl
    ) -> InferenceRequest:
        """The same InferenceRequest (and the same checks) the gRPC adapter builds."""
        limits.check(self.model, len(self.messages))
        if self.n not in (None, 1):
            raise InvalidRequest(f"n must be 1 (one choice per request), got {self.n}", "n")
        refused = [
            name
            for name, value in (self.model_extra or {}).items()
            if name in UNSUPPORTED and value not in (None, *UNSUPPORTED[name])
        ]
        if refused:
            raise InvalidRequest(
                f"unsupported parameter(s): {', '.join(sorted(refused))}; this proxy serves "
                "plain text chat completions",
                refused[0],
            )
        return InferenceRequest(
            model=self.model,
            messages=tuple(_message(i, m) for i, m in enumerate(self.messages)),
            temperature=self.temperature,
            max_tokens=self._max_tokens(),
            cache=cache,
            tenant=tenant,
        )

    def _max_tokens(self) -> int | None:
        """`max_completion_tokens` (OpenAI's name now), else the older `max_tokens`; as OpenAI,
        a value below 1 is refused naming the parameter, never taken as "no limit"."""
        for name in ("max_completion_tokens", "max_tokens"):
            value = getattr(self, name)
            if value is None:
                continue
            if value < 1:
                raise InvalidRequest(f"{name} must be at least 1, got {value}", name)
            if value > MAX_OUTPUT_TOKENS:
                raise InvalidRequest(
                    f"{name} must be at most {MAX_OUTPUT_TOKENS}, got {value}", name
                )
            return int(value)
        return None


def parse(body: bytes, limits: RequestLimits | None = None) -> ChatCompletionRequest:
    """The request body, or InvalidRequest naming the first field at fault. The messages and their
    content parts are counted in the raw JSON, before any per-item validation (as the gRPC side
    counts them before mapping): a hostile list costs one JSON parse (pydantic-core's, a few
    microseconds for a usual body), not a model per item."""
    try:
        raw = from_json(body, allow_inf_nan=False)
    except ValueError as error:
        raise InvalidRequest(f"the body is not valid JSON: {str(error)[:120]}") from None
    _bounded(raw, limits or RequestLimits())
    # from the JSON again: pydantic validates JSON several times faster than dicts
    return _validated(ChatCompletionRequest, body)


_Body = TypeVar("_Body", bound=BaseModel)


def _validated(kind: type[_Body], body: bytes) -> _Body:
    """The request body as `kind`, or InvalidRequest naming the first field at fault."""
    try:
        return kind.model_validate_json(body)
    except ValidationError as error:
        first = error.errors(include_url=False, include_input=False)[0]
        if first["type"] == "json_invalid":
            raise InvalidRequest(f"the body is not valid JSON: {first['msg']}") from None
        where = param_path(first["loc"])
        raise InvalidRequest(f"{where or 'body'}: {first['msg']}", where) from None


def param_path(location: tuple[int | str, ...]) -> str | None:
    """A validation error's location as OpenAI names a parameter: `messages[0].content`."""
    path = ""
    for part in location:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part not in _UNION_TAGS and "[" not in part and not part.startswith("function-"):
            path += f".{part}" if path else part  # (pydantic's union member tags skipped)
    return path or None


def _bounded(raw: Any, limits: RequestLimits) -> None:
    """MAX_MESSAGES bounds the messages, and the content parts of all of them together."""
    if not isinstance(raw, dict):
        return
    model, messages = raw.get("model"), raw.get("messages")
    if not isinstance(messages, list):
        return
    limits.check(model if isinstance(model, str) else "", len(messages))
    parts = sum(
        len(m["content"])
        for m in messages
        if isinstance(m, dict) and isinstance(m.get("content"), list)
    )
    if parts > limits.max_messages:
        raise InvalidRequest(
            f"{parts} content parts in all messages; the limit is {limits.max_messages} "
            "(MAX_MESSAGES)",
            "messages",
        )


def _message(index: int, message: ChatMessage) -> Message:
    role = _ROLES.get(message.role)
    if role is None:
        raise InvalidRequest(
            f"messages[{index}].role must be system, developer, user or assistant, got "
            f"{message.role[:32]!r}",
            f"messages[{index}].role",
        )
    content = message.content
    if isinstance(content, list):
        others = sorted({p.type[:32] for p in content if p.type != "text" or p.text is None})
        if others:
            raise InvalidRequest(
                f"messages[{index}].content has part type(s) {', '.join(others)}: only text "
                "parts are supported",
                f"messages[{index}].content",
            )
        content = "".join(p.text or "" for p in content)
    return Message(role, content or "")


# -- responses ------------------------------------------------------------------------------


class UsageBody(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, usage: Usage) -> UsageBody:
        total = usage.input_tokens + usage.output_tokens
        return cls(
            prompt_tokens=usage.input_tokens,
            completion_tokens=usage.output_tokens,
            total_tokens=total,
        )


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: None = None  # required by OpenAI's schema (nullable): we never refuse ourselves


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: str
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: UsageBody

    @classmethod
    def of(cls, answer: Answer, id: str, created: int) -> ChatCompletion:
        c = answer.completion
        return cls(
            id=id,
            created=created,
            model=c.model,
            choices=[
                Choice(
                    message=AssistantMessage(content=c.content),
                    finish_reason=_FINISH[c.finish_reason],
                )
            ],
            usage=UsageBody.of(c.usage),
        )


class ChunkDelta(BaseModel):
    """Only the fields a chunk carries: `role` is a non-nullable enum in OpenAI's schema, so it
    is left out of every chunk but the first, never sent as null."""

    role: Literal["assistant"] | None = None
    content: str | None = None

    @model_serializer(mode="wrap")
    def _present(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}


class ChunkChoice(BaseModel):
    index: int = 0
    delta: ChunkDelta
    finish_reason: str | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: UsageBody | None = None


class LastChunk(ChatCompletionChunk):
    """The finish chunk, with what the headers could not say before the stream began: the
    provider that answered and the cache status (`llm_proxy`, beyond OpenAI's fields)."""

    llm_proxy: dict[str, object]


def finish_reason(answer: Answer) -> str:
    return _FINISH[answer.completion.finish_reason]


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ModelUsage(BaseModel):
    model: str
    prompt_tokens: int
    completion_tokens: int
    saved_tokens: int  # answered from the cache: free, counted against no budget
    requests: int


class UsageReport(BaseModel):
    """GET /v1/usage: the calling tenant's usage in its budget window (ours, not OpenAI's)."""

    object: Literal["usage"] = "usage"
    tenant: str
    window: str
    tokens: int
    budget: int | None
    resets_at: str

    models: list[ModelUsage]

    @classmethod
    def of(cls, spent: Spent, budget: Budget | None) -> UsageReport:
        return cls(
            tenant=spent.tenant,
            window=spent.window.value,
            tokens=spent.tokens,
            budget=budget.tokens if budget is not None else None,
            resets_at=spent.resets_at.isoformat().replace("+00:00", "Z"),
            models=[
                ModelUsage(
                    model=model,
                    prompt_tokens=kinds["prompt"],
                    completion_tokens=kinds["completion"],
                    saved_tokens=kinds["saved"],
                    requests=kinds["requests"],
                )
                for model, kinds in spent.by_model().items()
            ],
        )


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


# -- embeddings -----------------------------------------------------------------------------


class EmbeddingsRequest(_Loose):
    model: str
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = None

    def to_domain(self, limits: RequestLimits, tenant: str) -> EmbeddingRequest:
        limits.check(self.model, 0)
        inputs = [self.input] if isinstance(self.input, str) else self.input
        if any(not isinstance(text, str) for text in inputs):
            raise InvalidRequest(
                "input as token arrays is not supported: send a string or a list of strings",
                "input",
            )
        return EmbeddingRequest(
            self.model, tuple(str(text) for text in inputs), self.dimensions, tenant
        )


def parse_embeddings(body: bytes) -> EmbeddingsRequest:
    return _validated(EmbeddingsRequest, body)


class EmbeddingItem(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingsUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsList(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingItem]
    model: str
    usage: EmbeddingsUsage

    @classmethod
    def of(cls, embeddings: Embeddings, base64: bool) -> EmbeddingsList:
        """`base64`: each vector as little-endian float32 bytes in base64, as OpenAI sends it
        (what the openai SDK asks for by default, and decodes)."""
        data = [
            EmbeddingItem(index=i, embedding=_b64(vector) if base64 else list(vector))
            for i, vector in enumerate(embeddings.vectors)
        ]
        tokens = embeddings.input_tokens
        return cls(
            data=data,
            model=embeddings.model,
            usage=EmbeddingsUsage(prompt_tokens=tokens, total_tokens=tokens),
        )


def _b64(vector: tuple[float, ...]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
