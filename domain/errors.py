"""The error taxonomy. Each class is one kind of outcome the transport maps to one status."""

from __future__ import annotations


class ProxyError(Exception):
    """Base of every error the proxy reports to a client on purpose. `param`: the request
    parameter at fault, when one is (OpenAI's error `param`)."""

    param: str | None = None


class InvalidRequest(ProxyError):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class UnknownModel(ProxyError):
    param = "model"

    def __init__(self, model: str, reason: str, routable: tuple[str, ...]) -> None:
        self.model = model
        self.routable = routable
        known = ", ".join(routable) if routable else "none (no provider has API keys)"
        super().__init__(f"model {model!r}: {reason}; routable models: {known}")


class NoUsableKey(ProxyError):
    """Every key of a provider is cooling down or disabled."""

    def __init__(self, provider: str, retry_after: float | None) -> None:
        self.provider = provider
        self.retry_after = retry_after
        when = (
            f"retry after {retry_after:.1f}s"
            if retry_after is not None
            else "every key is disabled (rejected by the provider)"
        )
        super().__init__(f"all {provider} API keys are rate-limited: {when}")


class CircuitOpen(ProxyError):
    def __init__(self, provider: str, retry_after: float) -> None:
        self.provider = provider
        self.retry_after = retry_after
        super().__init__(
            f"{provider} is failing and its circuit breaker is open: retry after {retry_after:.1f}s"
        )


class UpstreamUnavailable(ProxyError):
    """The provider kept failing until retries or the deadline ran out."""

    def __init__(self, provider: str, attempts: int, last: ProviderFailure) -> None:
        self.provider = provider
        self.attempts = attempts
        self.last = last
        plural = "s" if attempts != 1 else ""
        super().__init__(f"{provider} unavailable after {attempts} attempt{plural}: {last}")


class ShuttingDown(ProxyError):
    """The proxy is stopping and its SHUTDOWN_GRACE ran out before this call finished."""

    def __init__(self) -> None:
        super().__init__(
            "the proxy is shutting down and this call did not finish within SHUTDOWN_GRACE; "
            "retry (another replica or the restarted proxy will answer)"
        )


class DeadlineExceeded(ProxyError):
    pass


class NoTimeToRetry(DeadlineExceeded):
    """The provider failed, and the wait before another try (its retry-after, or the backoff)
    would reach past the deadline: the time left may still let another provider answer."""


class Unauthenticated(ProxyError):
    pass


class ProviderFailure(ProxyError):
    """The outcome of one failed upstream call, classified by the provider adapter.

    Messages are written by the adapter and never contain raw upstream bodies or key material.
    """

    retryable = False
    breaker_failure = False


class RateLimited(ProviderFailure):
    """429: the key used is limited until `retry_after` seconds from now (None: unknown)."""

    retryable = True

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class KeyRejected(ProviderFailure):
    """401/403: the key used is invalid or lacks permission."""

    retryable = True


class UpstreamFault(ProviderFailure):
    """5xx, timeout, connection error, or a malformed answer: the provider is at fault."""

    retryable = True
    breaker_failure = True

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class MalformedAnswer(UpstreamFault):
    """A 2xx answer the proxy cannot use (not JSON, missing fields, out-of-range numbers, the
    wrong content type, too large). Retried once: the same answer again ends the request."""


class ConnectionsExhausted(ProviderFailure):
    """The proxy's own connection pool to the provider stayed full (UPSTREAM_MAX_CONNECTIONS):
    the proxy is overloaded, the provider did nothing wrong. Neither retried nor counted."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class UpstreamRejected(ProviderFailure):
    """Another 4xx: the provider refused this request (a client error, not retried); or the
    adapter refused it before sending, as a request that provider cannot take (`param`)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class BudgetExhausted(ProxyError):
    """A tenant used its token budget for the current window."""

    def __init__(self, tenant: str, spent: int, budget: str, retry_after: float) -> None:
        self.tenant = tenant
        self.retry_after = retry_after
        super().__init__(
            f"tenant {tenant} has used {spent} tokens of its budget of {budget}; the budget "
            f"resets in {retry_after:.0f}s (TENANT_TOKEN_BUDGET / TENANT_BUDGETS)"
        )
