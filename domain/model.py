"""Requests and answers as the proxy understands them, independent of any wire format."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from domain.errors import InvalidRequest

MAX_OUTPUT_TOKENS = 262_144
MAX_INPUT_CHARS = 1_000_000


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """Bounds checked on the raw request before any per-message work or log line: a hostile
    client must not make the proxy spend time or log space in proportion to what it sends."""

    max_model_name: int = 128
    max_messages: int = 1000
    shown_chars: int = 64  # of a client's value echoed in an error or a log line

    def check(self, model: str, message_count: int) -> None:
        if len(model) > self.max_model_name:
            raise InvalidRequest(
                f"model name is {len(model)} characters ({self.shown(model)}); the limit is "
                f"{self.max_model_name} (MAX_MODEL_NAME_LENGTH)",
                "model",
            )
        if message_count > self.max_messages:
            raise InvalidRequest(
                f"{message_count} messages; the limit is {self.max_messages} (MAX_MESSAGES)",
                "messages",
            )

    def shown(self, value: str) -> str:
        """`value` as it may appear in an error message or a log line: cut short."""
        if len(value) <= self.shown_chars:
            return value
        return f"{value[: self.shown_chars]}... ({len(value)} chars)"


class Role(enum.Enum):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"


class FinishReason(enum.Enum):
    STOP = "stop"
    LENGTH = "length"
    CONTENT_FILTER = "content_filter"
    OTHER = "other"


class CacheStatus(enum.Enum):
    MISS = "miss"
    EXACT = "exact"
    SEMANTIC = "semantic"
    BYPASS = "bypass"


@dataclass(frozen=True, slots=True)
class Message:
    role: Role
    content: str


@dataclass(frozen=True, slots=True)
class CacheControl:
    skip_lookup: bool = False
    skip_store: bool = False


@dataclass(frozen=True, slots=True)
class InferenceRequest:
    model: str
    messages: tuple[Message, ...]
    temperature: float | None = None
    max_tokens: int | None = None
    cache: CacheControl = field(default_factory=CacheControl)
    # Who asks (a client-token fingerprint when auth is on): cache entries never cross tenants.
    tenant: str = ""

    def __post_init__(self) -> None:
        if not self.model.strip():
            raise InvalidRequest(
                'model is required, e.g. "gpt-4o-mini" or "gemini-2.0-flash"', "model"
            )
        if not self.messages:
            raise InvalidRequest("give a prompt or at least one message", "messages")
        for i, message in enumerate(self.messages):
            if not message.content.strip():
                raise InvalidRequest(f"messages[{i}].content is empty", f"messages[{i}].content")
        if all(m.role is Role.SYSTEM for m in self.messages):
            raise InvalidRequest("give at least one user message", "messages")
        size = sum(len(m.content) for m in self.messages)
        if size > MAX_INPUT_CHARS:
            raise InvalidRequest(
                f"input is {size} characters; the limit is {MAX_INPUT_CHARS}", "messages"
            )
        if self.temperature is not None and not 0.0 <= self.temperature <= 2.0:
            raise InvalidRequest(
                f"temperature must be within [0, 2], got {self.temperature:g}", "temperature"
            )
        if self.max_tokens is not None and not 0 < self.max_tokens <= MAX_OUTPUT_TOKENS:
            raise InvalidRequest(
                f"max_tokens must be within [1, {MAX_OUTPUT_TOKENS}] (or 0 for the provider's "
                f"default), got {self.max_tokens}",
                "max_tokens",
            )

    @property
    def prefill(self) -> bool:
        """The conversation ends with an assistant turn: the model continues it (system
        messages after it aside)."""
        turns = [m for m in self.messages if m.role is not Role.SYSTEM]
        return turns[-1].role is Role.ASSISTANT

    @property
    def asks(self) -> bool:
        """The last message is the user's: what the cache keys an answer by (a prefill, or a
        system message after the user, is a different request from the same last user text)."""
        return self.messages[-1].role is Role.USER

    @property
    def system(self) -> str | None:
        parts = [m.content for m in self.messages if m.role is Role.SYSTEM]
        return "\n\n".join(parts) if parts else None


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Completion:
    content: str
    model: str
    provider: str
    finish_reason: FinishReason
    usage: Usage


@dataclass(frozen=True, slots=True)
class CacheInfo:
    status: CacheStatus
    similarity: float = 0.0


@dataclass(frozen=True, slots=True)
class Answer:
    """`completion.model` and `.provider` say who answered. `fallback_from` is the model the
    client asked for when another model of its MODEL_FALLBACKS chain answered instead."""

    completion: Completion
    cache: CacheInfo
    fallback_from: str | None = None


@dataclass(frozen=True, slots=True)
class Delta:
    """A piece of a streamed answer."""

    content: str


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """The end of a streamed answer from a provider."""

    model: str
    finish_reason: FinishReason
    usage: Usage


StreamEvent = Delta | StreamEnd


MAX_EMBEDDING_INPUTS = 2048  # OpenAI's own limit per request


@dataclass(frozen=True, slots=True)
class EmbeddingRequest:
    """Texts to turn into vectors with `model`. `dimensions`: a shorter vector, for the models
    that can cut theirs (None: the model's own size)."""

    model: str
    inputs: tuple[str, ...]
    dimensions: int | None = None
    tenant: str = ""

    def __post_init__(self) -> None:
        if not self.model.strip():
            raise InvalidRequest('model is required, e.g. "text-embedding-3-small"', "model")
        if not self.inputs:
            raise InvalidRequest("input is empty: give a string or a list of strings", "input")
        if len(self.inputs) > MAX_EMBEDDING_INPUTS:
            raise InvalidRequest(
                f"input has {len(self.inputs)} texts; the limit is {MAX_EMBEDDING_INPUTS}",
                "input",
            )
        for i, text in enumerate(self.inputs):
            if not text:
                raise InvalidRequest(f"input[{i}] is an empty string", "input")
        size = sum(len(text) for text in self.inputs)
        if size > MAX_INPUT_CHARS:
            raise InvalidRequest(f"input is {size} characters; the limit is {MAX_INPUT_CHARS}")
        if self.dimensions is not None and self.dimensions < 1:
            raise InvalidRequest(
                f"dimensions must be at least 1, got {self.dimensions}", "dimensions"
            )


@dataclass(frozen=True, slots=True)
class Embeddings:
    """One vector per input, in input order; `model` and `provider` say who made them."""

    vectors: tuple[tuple[float, ...], ...]
    model: str
    provider: str
    input_tokens: int = 0
