"""OpenAI's chat-completions wire format as pydantic models, and its mapping to and from the
domain. Only what we serve: chat completions (plain and streamed), the model list, errors.

Unknown request fields are ignored (as vLLM and most OpenAI-compatible servers do), except the
OpenAI parameters in UNSUPPORTED: set to anything but their neutral value they would change the
answer, so they are refused with a 400 naming them rather than silently dropped."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from domain.errors import InvalidRequest
from domain.model import (
    Answer,
    CacheControl,
    FinishReason,
    InferenceRequest,
    Message,
    RequestLimits,
    Role,
    Usage,
)

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
    stream: bool = False
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
            raise Invalid(f"n must be 1 (one choice per request), got {self.n}", "n")
        refused = [
            name
            for name, value in (self.model_extra or {}).items()
            if name in UNSUPPORTED and value not in (None, *UNSUPPORTED[name])
        ]
        if refused:
            raise Invalid(
                f"unsupported parameter(s): {', '.join(sorted(refused))}; this proxy serves "
                "plain text chat completions",
                refused[0],
            )
        max_tokens = self.max_completion_tokens or self.max_tokens
        if max_tokens is not None and max_tokens < 0:
            raise Invalid(f"max_tokens must not be negative, got {max_tokens}", "max_tokens")
        return InferenceRequest(
            model=self.model,
            messages=tuple(_message(i, m) for i, m in enumerate(self.messages)),
            temperature=self.temperature,
            max_tokens=max_tokens or None,
            cache=cache,
            tenant=tenant,
        )


class Invalid(InvalidRequest):
    """An invalid request, with the parameter at fault (OpenAI's `param`)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def parse(body: bytes) -> ChatCompletionRequest:
    """The request body, or Invalid naming the first field at fault."""
    try:
        return ChatCompletionRequest.model_validate_json(body)
    except ValidationError as error:
        first = error.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or None
        if first["type"] == "json_invalid":
            raise Invalid(f"the body is not valid JSON: {first['msg']}") from None
        raise Invalid(f"{where or 'body'}: {first['msg']}", where) from None


def _message(index: int, message: ChatMessage) -> Message:
    role = _ROLES.get(message.role)
    if role is None:
        raise Invalid(
            f"messages[{index}].role must be system, developer, user or assistant, got "
            f"{message.role[:32]!r}",
            f"messages.{index}.role",
        )
    content = message.content
    if isinstance(content, list):
        others = sorted({p.type[:32] for p in content if p.type != "text" or p.text is None})
        if others:
            raise Invalid(
                f"messages[{index}].content has part type(s) {', '.join(others)}: only text "
                "parts are supported",
                f"messages.{index}.content",
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
    role: Literal["assistant"] | None = None
    content: str | None = None


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
    created: int = 0
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail
