"""Who may call, and how much: client tokens, a per-tenant rate and a cap on calls in flight.
One `Gate` per process, shared by both driving adapters (gRPC, OpenAI-compatible HTTP): a token
is the same tenant, and MAX_CONCURRENT_REQUESTS counts the calls of both."""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

from adapters.inbound.failures import Failure, Kind
from application.ports import Clock, RateLimiter

log = logging.getLogger("llm_proxy.auth")

ANONYMOUS = ""
# Over MAX_CONCURRENT_REQUESTS nothing says when a slot frees up; a second is a fair hint.
BUSY_RETRY_AFTER = 1.0
LOG_EVERY = 1.0  # seconds between two lines about refused credentials

Metadata = Iterable[tuple[str, str | bytes]]


class AuthFailure(Exception):
    def __init__(self, reason: str, detail: str, token: bytes | None = None) -> None:
        super().__init__(detail)
        self.reason, self.token = reason, token


class Refused(Exception):
    """A call turned away before it reached the use case."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure


def bearer_token(metadata: Metadata | None) -> bytes:
    """The token from `authorization: Bearer <token>`: the scheme in any case, surrounding
    whitespace ignored, so one token is one tenant however the header is spelt."""
    values = [v for k, v in metadata or () if k == "authorization"]
    if not values:
        raise AuthFailure("missing", "missing credentials: send 'authorization: Bearer <token>'")
    try:
        value = values[0].encode() if isinstance(values[0], str) else values[0]
    except UnicodeEncodeError:  # bytes that are not UTF-8, as aiohttp hands them over
        raise AuthFailure(
            "malformed", "malformed credentials: the authorization header is not valid UTF-8"
        ) from None
    scheme, _, token = value.strip().partition(b" ")
    token = token.strip()
    if scheme.lower() != b"bearer" or not token:
        raise AuthFailure("malformed", "malformed credentials: expected 'Bearer <token>'")
    return token


def fingerprint(token: bytes) -> str:
    """Names a token in logs and cache scopes without revealing it."""
    return hashlib.sha256(token).hexdigest()[:16]


class ClientAuth:
    """The configured client tokens, each with its tenant's name (AUTH_TOKENS `name=token`, or
    the token's fingerprint). With none, every caller is the one anonymous tenant (so
    per-tenant state cannot grow with whatever headers callers send)."""

    def __init__(self, tokens: Iterable[tuple[str, str]]) -> None:
        named = tuple(tokens)
        # digests, so the comparison does not even reveal a token's length
        self._digests = tuple(hashlib.sha256(t.encode()).digest() for _, t in named)
        self._names = tuple(name for name, _ in named)

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def tenant(self, metadata: Metadata | None) -> str:
        """The caller's tenant; raises AuthFailure when tokens are configured and it has none."""
        if not self._digests:
            return ANONYMOUS
        token = bearer_token(metadata)
        digest = hashlib.sha256(token).digest()
        # compare against every token so the time taken does not tell which one matched
        matched = [hmac.compare_digest(digest, known) for known in self._digests]
        if not any(matched):
            raise AuthFailure("invalid", "invalid token", token)
        return self._names[matched.index(True)]


class AdmissionMetrics(Protocol):
    def request_refused(self, status: str) -> None: ...

    def auth_failure(self, reason: str) -> None: ...


@dataclass(frozen=True)
class Limits:
    max_concurrent: int = 0  # 0: none
    rate: RateLimiter | None = None


class Gate:
    """`admit` raises Refused (unauthenticated, or resource_exhausted with when to retry: tenant
    over its rate); `slot` holds one of MAX_CONCURRENT_REQUESTS for the call's duration."""

    def __init__(
        self, auth: ClientAuth, limits: Limits, metrics: AdmissionMetrics, clock: Clock
    ) -> None:
        self._auth, self._limits, self._metrics, self._clock = auth, limits, metrics, clock
        self.in_flight = 0
        self._last_log = float("-inf")
        self._unlogged = 0

    @property
    def counts(self) -> bool:
        """Whether calls in flight are limited (and so must hold a `slot`)."""
        return bool(self._limits.max_concurrent)

    async def admit(self, metadata: Metadata | None, method: str) -> str:
        """The caller's tenant, once its credential and its tenant's rate allow the call."""
        try:
            tenant = self._auth.tenant(metadata)
        except AuthFailure as failure:
            self._auth_failed(failure, method)
            self._metrics.request_refused(Kind.UNAUTHENTICATED.value)
            raise Refused(Failure(Kind.UNAUTHENTICATED, str(failure))) from None
        rate = self._limits.rate
        if rate is not None:
            wait = await rate.take(tenant)
            if wait > 0:
                self._metrics.request_refused(Kind.RESOURCE_EXHAUSTED.value)
                raise Refused(
                    Failure(
                        Kind.RESOURCE_EXHAUSTED,
                        f"over this client's rate limit (TENANT_RATE_LIMIT); retry in {wait:.2f}s",
                        wait,
                    )
                )
        return tenant

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Checked and counted as the call starts (one step on the event loop: no two calls can
        both take the last slot), and uncounted when it ends, however it ends."""
        limit = self._limits.max_concurrent
        if not limit:
            yield
            return
        if self.in_flight >= limit:
            self._metrics.request_refused(Kind.RESOURCE_EXHAUSTED.value)
            raise Refused(
                Failure(
                    Kind.RESOURCE_EXHAUSTED,
                    f"the proxy is at its limit of {limit} requests in flight "
                    "(MAX_CONCURRENT_REQUESTS); retry shortly",
                    BUSY_RETRY_AFTER,
                )
            )
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    def _auth_failed(self, failure: AuthFailure, method: str) -> None:
        """One line per second at most, saying how many were left out: a client hammering with
        a bad token must not flood the logs (the counter has every one)."""
        self._metrics.auth_failure(failure.reason)
        now = self._clock.now()
        if now - self._last_log < LOG_EVERY:
            self._unlogged += 1
            return
        who = fingerprint(failure.token) if failure.token is not None else failure.reason
        log.warning(
            "refused %s: %s credential (token %s)%s",
            method,
            failure.reason,
            who,
            f"; {self._unlogged} more refused since the last line" if self._unlogged else "",
            extra={"reason": failure.reason, "token_fingerprint": who, "method": method},
        )
        self._last_log, self._unlogged = now, 0
