"""Domain errors -> the kind of failure a client is told about: the one classification both
driving adapters (gRPC, OpenAI-compatible HTTP) map to their wire status, so they cannot drift.

A kind is named after its gRPC status (lower case), the vocabulary `requests_total{status}`
already uses; HTTP maps each kind to a status code and OpenAI's error type."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from domain.errors import (
    BudgetExhausted,
    CircuitOpen,
    ConnectionsExhausted,
    DeadlineExceeded,
    InvalidRequest,
    KeyRejected,
    NoUsableKey,
    ProxyError,
    RateLimited,
    ShuttingDown,
    Unauthenticated,
    UnknownModel,
    UpstreamFault,
    UpstreamRejected,
    UpstreamUnavailable,
)


class Kind(enum.Enum):
    INVALID_ARGUMENT = "invalid_argument"
    NOT_FOUND = "not_found"
    RESOURCE_EXHAUSTED = "resource_exhausted"
    UNAVAILABLE = "unavailable"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    UNAUTHENTICATED = "unauthenticated"
    CANCELLED = "cancelled"
    INTERNAL = "internal"


@dataclass(frozen=True, slots=True)
class Failure:
    kind: Kind
    message: str
    retry_after: float | None = None  # seconds, when known
    code: str | None = None  # OpenAI's error code, when not the kind's usual one


def classify(error: ProxyError) -> Failure:
    """DESIGN §2's error -> status table. Messages are the domain's own, never upstream bodies."""
    message = str(error)
    match error:
        case InvalidRequest() | UpstreamRejected():
            return Failure(Kind.INVALID_ARGUMENT, message)
        case UnknownModel():
            return Failure(Kind.NOT_FOUND, message)
        case NoUsableKey(retry_after=None):
            return Failure(Kind.UNAVAILABLE, message)
        case (
            NoUsableKey(retry_after=seconds)
            | RateLimited(retry_after=seconds)
            | ConnectionsExhausted(retry_after=seconds)
        ):
            return Failure(Kind.RESOURCE_EXHAUSTED, message, seconds)
        case BudgetExhausted(retry_after=seconds):
            return Failure(Kind.RESOURCE_EXHAUSTED, message, seconds, "insufficient_quota")
        case CircuitOpen(retry_after=seconds):
            return Failure(Kind.UNAVAILABLE, message, seconds)
        case UpstreamUnavailable() | UpstreamFault() | KeyRejected() | ShuttingDown():
            return Failure(Kind.UNAVAILABLE, message)
        case DeadlineExceeded():
            return Failure(Kind.DEADLINE_EXCEEDED, message)
        case Unauthenticated():
            return Failure(Kind.UNAUTHENTICATED, message)
    return Failure(Kind.INTERNAL, "internal error")
