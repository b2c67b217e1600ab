"""The OpenAI-compatible HTTP API on aiohttp: thin handlers that admit the caller, translate the
wire format (protocol.py) and call the same InferenceService as gRPC. One middleware turns every
failure into OpenAI's error JSON, records `http_requests_total` and opens the request's span."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web
from opentelemetry import trace
from pydantic import BaseModel

from adapters.inbound.admission import Gate, Metadata, Refused
from adapters.inbound.drain import Drain
from adapters.inbound.failures import Failure, Kind, classify
from adapters.inbound.http import protocol
from adapters.inbound.request_log import Outcome
from adapters.outbound.observability.tracing import http_server_span
from application.embeddings import EmbeddingService
from application.inference import InferenceService
from application.metering import Metering, tenant_name
from application.models import ListedModel, ModelCatalog
from application.ports import Clock, Metrics
from domain.errors import InvalidRequest, ProxyError, UnknownModel
from domain.model import (
    Answer,
    CacheControl,
    CacheInfo,
    CacheStatus,
    InferenceRequest,
    RequestLimits,
)

log = logging.getLogger("llm_proxy.requests")

CHAT = "/v1/chat/completions"
EMBEDDINGS = "/v1/embeddings"
MODELS = "/v1/models"
USAGE = "/v1/usage"
CACHE_HEADER = "x-llm-proxy-cache"
SIMILARITY_HEADER = "x-llm-proxy-cache-similarity"
FALLBACK_HEADER = "x-llm-proxy-fallback-from"
PROVIDER_HEADER = "x-llm-proxy-provider"
CACHE_CONTROL_HEADER = "x-llm-proxy-cache-control"
TIMEOUT_HEADER = "x-llm-proxy-timeout"  # seconds: the client's deadline, as gRPC's
_DIRECTIVES = {"no-lookup", "no-store"}
_ORIGIN = web.RequestKey("llm_proxy.origin", str)  # the allowed Origin to send CORS headers to
CORS_HEADERS = ", ".join(
    ("Authorization", "Content-Type", CACHE_CONTROL_HEADER, TIMEOUT_HEADER, "traceparent")
)
CLIENT_CLOSED = 499  # nginx's code for a client that went away: nobody receives it

# kind -> (HTTP status, OpenAI error type, code): the statuses the OpenAI SDKs map to their
# exception classes (400 BadRequestError, 401 AuthenticationError, 404 NotFoundError,
# 429 RateLimitError, 5xx InternalServerError).
_HTTP: dict[Kind, tuple[int, str, str | None]] = {
    Kind.INVALID_ARGUMENT: (400, "invalid_request_error", None),
    Kind.UNAUTHENTICATED: (401, "authentication_error", "invalid_api_key"),
    Kind.NOT_FOUND: (404, "invalid_request_error", "model_not_found"),
    Kind.RESOURCE_EXHAUSTED: (429, "rate_limit_error", "rate_limit_exceeded"),
    Kind.CANCELLED: (CLIENT_CLOSED, "api_error", "cancelled"),
    Kind.INTERNAL: (500, "api_error", None),
    Kind.UNAVAILABLE: (503, "api_error", "service_unavailable"),
    Kind.DEADLINE_EXCEEDED: (504, "api_error", "timeout"),
}


class HttpMetrics(Metrics, Protocol):
    def http_request(self, route: str, code: int) -> None: ...


def error_response(failure: Failure, param: str | None = None) -> web.Response:
    status, kind, code = _HTTP[failure.kind]
    body = protocol.ErrorBody(
        error=protocol.ErrorDetail(
            message=failure.message, type=kind, param=param, code=failure.code or code
        )
    )
    headers = {}
    if failure.retry_after is not None:  # whole seconds, rounded up: what the SDKs parse
        headers["Retry-After"] = str(max(1, -int(-failure.retry_after // 1)))
        headers["retry-after-ms"] = str(max(0, round(failure.retry_after * 1000)))
    return _json(body, status, headers)


class Rejected(Exception):
    """A request refused at the HTTP layer with a status of its own (no gRPC kind has it);
    `close`: the connection is closed after the answer (its body was not read to the end)."""

    def __init__(self, status: int, message: str, code: str, close: bool = False) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.close = status, message, code, close

    def response(self) -> web.Response:
        kind = "api_error" if self.status >= 500 else "invalid_request_error"
        body = protocol.ErrorBody(
            error=protocol.ErrorDetail(message=self.message, type=kind, code=self.code)
        )
        headers = {"Retry-After": "1"} if self.status == 503 else None
        response = _json(body, self.status, headers)
        if self.close:
            response.force_close()
        return response


def _json(
    body: BaseModel, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=body.model_dump_json(), status=status, headers=headers, content_type="application/json"
    )


def _metadata(request: web.Request) -> Metadata:
    value = request.headers.get("Authorization")
    return (("authorization", value),) if value is not None else ()


def cache_control(request: web.Request) -> CacheControl:
    """`x-llm-proxy-cache-control: no-lookup, no-store`: the gRPC request's cache options."""
    raw = request.headers.get(CACHE_CONTROL_HEADER, "")
    directives = {d.strip().lower() for d in raw.split(",") if d.strip()}
    unknown = directives - _DIRECTIVES
    if unknown:
        raise InvalidRequest(
            f"{CACHE_CONTROL_HEADER}: unknown directive(s) {', '.join(sorted(unknown))[:80]}; "
            "use no-lookup and/or no-store"
        )
    return CacheControl("no-lookup" in directives, "no-store" in directives)


def time_left(request: web.Request) -> float | None:
    """`x-llm-proxy-timeout: <seconds>`: the client's deadline; REQUEST_TIMEOUT bounds it."""
    raw = request.headers.get(TIMEOUT_HEADER)
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds < float("inf"):
        raise InvalidRequest(f"{TIMEOUT_HEADER} must be a positive number of seconds")
    return seconds


def cache_headers(answer: Answer) -> dict[str, str]:
    headers = {CACHE_HEADER: answer.cache.status.value, PROVIDER_HEADER: answer.completion.provider}
    if answer.cache.status is CacheStatus.SEMANTIC:
        headers[SIMILARITY_HEADER] = f"{answer.cache.similarity:.4f}"
    if answer.fallback_from is not None:
        headers[FALLBACK_HEADER] = answer.fallback_from
    return headers


def cache_extension(answer: Answer) -> dict[str, object]:
    """What a stream's last chunk says beyond OpenAI's fields (headers left before it was known)."""
    info: CacheInfo = answer.cache
    return {
        "provider": answer.completion.provider,
        "cache": info.status.value,
        "similarity": info.similarity,
        "fallback_from": answer.fallback_from,
    }


@dataclass
class _Outcome(Outcome):
    model: str = ""
    failure: Failure | None = None  # after the response started: it went out as an SSE event


class OpenAIApi:
    """`app()` is the aiohttp application; `now` gives `created` (Unix seconds)."""

    def __init__(
        self,
        service: InferenceService,
        catalog: ModelCatalog,
        embeddings: EmbeddingService,
        gate: Gate,
        metrics: HttpMetrics,
        clock: Clock,
        limits: RequestLimits | None = None,
        metering: Metering | None = None,
        max_request_bytes: int = 4 * 1024 * 1024,
        tracer_provider: trace.TracerProvider | None = None,
        now: Callable[[], float] = time.time,
        body_timeout: float = 10.0,
        max_buffered_bytes: int = 64 * 1024 * 1024,
        allowed_origins: tuple[str, ...] = (),
        check_host: bool = True,
    ) -> None:
        """`body_timeout`: HTTP_BODY_TIMEOUT (at most REQUEST_TIMEOUT); `max_buffered_bytes`:
        MAX_BUFFERED_BYTES, the bytes all bodies being read at once may hold;
        `allowed_origins`: HTTP_ALLOWED_ORIGINS; `check_host`: answer only a loopback Host
        (no client authentication: Settings.checks_host)."""
        self._service, self._catalog, self._gate = service, catalog, gate
        self._embeddings = embeddings
        self._metrics, self._clock, self._now = metrics, clock, now
        self._limits = limits or RequestLimits()
        self._metering = metering
        self._max_bytes = max_request_bytes
        self._tracer_provider = tracer_provider or trace.NoOpTracerProvider()
        self._started = int(now())  # `created` of a model its provider gives no date for
        self._body_timeout, self._max_buffered = body_timeout, max_buffered_bytes
        self.buffered = 0  # bytes reserved by the bodies being read now
        self.drain = Drain()
        self._origins = frozenset(o.lower() for o in allowed_origins)
        self._check_host = check_host

    def app(self) -> web.Application:
        app = web.Application(
            client_max_size=self._max_bytes, middlewares=[self._boundary, self._browsers]
        )
        app.router.add_post(CHAT, self.chat)
        app.router.add_post(EMBEDDINGS, self.embeddings)
        app.router.add_get(MODELS, self.models)
        app.router.add_get(MODELS + "/{model:.+}", self.model)
        app.on_response_prepare.append(_cors_headers)
        if self._metering is not None:
            app.router.add_get(USAGE, self.usage)
        return app

    # -- handlers ------------------------------------------------------------------------

    async def models(self, request: web.Request) -> web.Response:
        await self._gate.admit(_metadata(request), f"GET {MODELS}")
        cards = [self._card(m) for m in await self._catalog.models()]
        return _json(protocol.ModelList(data=cards))

    async def model(self, request: web.Request) -> web.Response:
        """`client.models.retrieve(id)`: 404 model_not_found unless a client may ask for it."""
        await self._gate.admit(_metadata(request), f"GET {MODELS}/{{model}}")
        name = request.match_info["model"]
        found = await self._catalog.find(name)
        if found is None:
            raise UnknownModel(
                self._limits.shown(name),
                "not served here",
                tuple(m.id for m in await self._catalog.models()),
            )
        return _json(self._card(found))

    def _card(self, model: ListedModel) -> protocol.ModelCard:
        created = model.created if model.created is not None else self._started
        return protocol.ModelCard(id=model.id, created=created, owned_by=model.provider)

    async def usage(self, request: web.Request) -> web.Response:
        tenant = await self._gate.admit(_metadata(request), f"GET {USAGE}")
        assert self._metering is not None
        spent = await self._metering.spent(tenant)
        return _json(protocol.UsageReport.of(spent, self._metering.budget(tenant)))

    async def chat(self, request: web.Request) -> web.StreamResponse:
        tenant = await self._gate.admit(_metadata(request), f"POST {CHAT}")
        body, deadline = await self._json_body(request)
        with self._gate.slot(), self.drain.call():
            async with self._observed() as outcome:
                outcome.tenant = tenant_name(tenant)
                parsed = protocol.parse(body, self._limits)
                outcome.model = self._limits.shown(parsed.model)
                domain = parsed.to_domain(self._limits, tenant, cache_control(request))
                id, created = f"chatcmpl-{uuid.uuid4().hex}", int(self._now())
                if parsed.stream:
                    return await self._stream(
                        request, parsed, domain, deadline, outcome, id, created
                    )
                async with self.drain.scope():
                    answer = await self._service.infer(domain, deadline)
                outcome.answered(answer)
                return _json(
                    protocol.ChatCompletion.of(answer, id, created), headers=cache_headers(answer)
                )

    async def embeddings(self, request: web.Request) -> web.Response:
        """Admitted, limited, observed and retried as a chat completion; never cached."""
        tenant = await self._gate.admit(_metadata(request), f"POST {EMBEDDINGS}")
        body, deadline = await self._json_body(request)
        with self._gate.slot(), self.drain.call():
            async with self._observed() as outcome:
                outcome.tenant = tenant_name(tenant)
                outcome.cache_status = CacheStatus.BYPASS
                parsed = protocol.parse_embeddings(body)
                outcome.model = self._limits.shown(parsed.model)
                domain = parsed.to_domain(self._limits, tenant)
                async with self.drain.scope():
                    result = await self._embeddings.embed(domain, deadline)
                outcome.provider = result.provider
                answer = protocol.EmbeddingsList.of(result, parsed.encoding_format == "base64")
                return _json(answer, headers={PROVIDER_HEADER: result.provider})

    async def _json_body(self, request: web.Request) -> tuple[bytes, float | None]:
        """The JSON body, and what is left of the request's deadline once it is read."""
        if request.content_type != "application/json" and not request.content_type.endswith(
            "+json"
        ):
            # a browser sends text/plain and form types cross-site without asking first
            raise Rejected(
                415,
                f"Content-Type must be application/json, got {request.content_type[:64]!r}",
                "unsupported_media_type",
                close=True,
            )
        deadline = time_left(request)
        started = self._clock.now()
        # the whole body first, under its own deadline: a slow client holds no slot meanwhile
        body = await self._body(request, deadline)
        if deadline is not None:
            deadline = max(0.0, deadline - (self._clock.now() - started))
        return body, deadline

    async def _body(self, request: web.Request, deadline: float | None) -> bytes:
        """The body, within HTTP_BODY_TIMEOUT (and the request's deadline), its size (or, not
        announced, MAX_REQUEST_BYTES) reserved from MAX_BUFFERED_BYTES while it is read."""
        size = request.content_length
        if size is not None and size > self._max_bytes:
            raise Rejected(
                413,
                f"the body is {size} bytes, larger than {self._max_bytes} (MAX_REQUEST_BYTES)",
                "request_too_large",
                close=True,
            )
        reserved = self._max_bytes if size is None else size
        if self.buffered + reserved > self._max_buffered:
            raise Rejected(
                503,
                "the proxy is reading as many request bodies as it may hold at once "
                "(MAX_BUFFERED_BYTES); retry shortly",
                "service_unavailable",
                close=True,
            )
        seconds = self._body_timeout if deadline is None else min(self._body_timeout, deadline)
        self.buffered += reserved
        try:
            async with asyncio.timeout(seconds):
                return await request.read()
        except TimeoutError:
            raise Rejected(
                408,
                f"the request body did not arrive within {seconds:g}s (HTTP_BODY_TIMEOUT)",
                "request_timeout",
                close=True,
            ) from None
        except web.HTTPRequestEntityTooLarge:
            raise Rejected(
                413,
                f"the body is larger than {self._max_bytes} bytes (MAX_REQUEST_BYTES)",
                "request_too_large",
                close=True,
            ) from None
        finally:
            self.buffered -= reserved

    async def _stream(
        self,
        request: web.Request,
        parsed: protocol.ChatCompletionRequest,
        domain: InferenceRequest,
        deadline: float | None,
        outcome: _Outcome,
        id: str,
        created: int,
    ) -> web.StreamResponse:
        chunk = _Chunks(id, created, parsed.model)
        async with aclosing(self._service.stream(domain, deadline)) as events:
            # The first event before the first byte: a failure up to here (unknown model, rate
            # limits, breaker open, upstream down) still gets its own HTTP status.
            async with self.drain.scope():
                first = await anext(events)
            response = web.StreamResponse(
                headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
            )
            await response.prepare(request)
            await response.write(chunk.role())
            try:
                async with self.drain.scope():  # not nested in another: see drain.py
                    event = first
                    while not isinstance(event, Answer):
                        await response.write(chunk.content(event.content))
                        event = await anext(events)
            except ProxyError as error:
                # The status line is gone: the failure travels as an SSE error event, which the
                # OpenAI SDKs raise as an APIError; never a silent truncation, no [DONE].
                outcome.failure = classify(error)
                await response.write(_event(_error_body(outcome.failure)))
                await response.write_eof()
                return response
            outcome.answered(event)
            await response.write(chunk.finish(event))
            if parsed.include_usage:
                await response.write(chunk.usage(event))
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
            return response

    # -- what every request goes through ------------------------------------------------

    @web.middleware
    async def _browsers(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Web pages: a Host that is not loopback is refused when no client authenticates (DNS
        rebinding: a page on evil.example resolved to 127.0.0.1), and so is any Origin not in
        HTTP_ALLOWED_ORIGINS (cross-site requests); an allowed one gets CORS headers and its
        preflight answered."""
        host = request.headers.get("Host")  # absent: not a browser (they always send it)
        if self._check_host and host is not None and not loopback_host(host):
            raise Rejected(
                421,
                f"Host {host[:64]!r} is not this machine: without client authentication "
                "the proxy answers only localhost or a loopback address (set AUTH_TOKENS, or "
                "ALLOW_UNAUTHENTICATED=true when something in front authenticates clients)",
                "misdirected_request",
            )
        origin = request.headers.get("Origin")
        if origin is None:
            return await handler(request)
        if origin.lower() not in self._origins:
            raise Rejected(
                403,
                f"requests from web pages are refused: Origin {origin[:64]!r} is not in "
                "HTTP_ALLOWED_ORIGINS",
                "origin_not_allowed",
            )
        request[_ORIGIN] = origin
        if request.method == "OPTIONS":  # a CORS preflight
            return web.Response(
                status=204,
                headers={
                    "Access-Control-Allow-Methods": "GET, POST",
                    "Access-Control-Allow-Headers": CORS_HEADERS,
                    "Access-Control-Max-Age": "600",
                },
            )
        return await handler(request)

    @asynccontextmanager
    async def _observed(self) -> AsyncIterator[_Outcome]:
        """The same metrics and log line as a gRPC call (status: the gRPC code of the outcome)."""
        outcome = _Outcome()
        started = self._clock.now()
        self._metrics.request_started()
        status = Kind.INTERNAL.value
        try:
            yield outcome
            status = outcome.failure.kind.value if outcome.failure else "ok"
        except ProxyError as error:
            status = classify(error).kind.value
            outcome.provider = getattr(error, "provider", outcome.provider)
            raise
        except (asyncio.CancelledError, ConnectionResetError):
            status = Kind.CANCELLED.value  # the client went away; the upstream call is cancelled
            raise
        finally:
            seconds = self._clock.now() - started
            self._metrics.request_finished(
                outcome.provider, outcome.model, outcome.cache_status, status, seconds
            )
            outcome.log(status, outcome.model, seconds, self._limits, protocol="http")

    @web.middleware
    async def _boundary(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "other"
        code = CLIENT_CLOSED
        with http_server_span(
            self._tracer_provider, request.method, route, request.headers
        ) as span:
            try:
                response = await _answer(request, handler)
                code = response.status
                return response
            finally:
                span(code)
                self._metrics.http_request(route, code)


async def _answer(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """The handler's response, or the failure in OpenAI's error JSON. Nothing from an upstream
    body reaches the client: the messages are the domain's own."""
    try:
        return await handler(request)
    except Refused as refused:
        return error_response(refused.failure)
    except Rejected as rejected:
        return rejected.response()
    except ProxyError as error:
        return error_response(classify(error), error.param)
    except web.HTTPException as error:
        if error.status == 404:
            message = (
                f"no route {request.method} {request.path[:80]}: this proxy serves "
                f"POST {CHAT}, POST {EMBEDDINGS}, GET {MODELS}, GET {MODELS}/{{model}} and "
                f"GET {USAGE}"
            )
        else:
            message = f"{error.status} {error.reason}"
        status = error.status
        body = protocol.ErrorBody(
            error=protocol.ErrorDetail(message=message, type="invalid_request_error")
        )
        return _json(body, status)
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("%s %s failed unexpectedly", request.method, request.path[:80])
        return error_response(Failure(Kind.INTERNAL, "internal error"))


def loopback_host(host: str) -> bool:
    """`localhost`, `*.localhost` or a loopback address, with or without a port."""
    name = host.rpartition("]")[0].lstrip("[") if host.startswith("[") else host
    if not host.startswith("[") and host.count(":") == 1:
        name = host.partition(":")[0]
    name = name.rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


async def _cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    origin = request.get(_ORIGIN)
    if origin is not None:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = ", ".join(
            (CACHE_HEADER, SIMILARITY_HEADER, PROVIDER_HEADER, FALLBACK_HEADER, "Retry-After")
        )
        response.headers["Vary"] = "Origin"


def _event(body: BaseModel) -> bytes:
    return b"data: " + body.model_dump_json().encode() + b"\n\n"


def _error_body(failure: Failure) -> protocol.ErrorBody:
    _, kind, code = _HTTP[failure.kind]
    return protocol.ErrorBody(
        error=protocol.ErrorDetail(message=failure.message, type=kind, code=failure.code or code)
    )


@dataclass(frozen=True)
class _Chunks:
    """The SSE events of one streamed completion, in OpenAI's chunk format."""

    id: str
    created: int
    model: str

    def _delta(self, delta: protocol.ChunkDelta) -> bytes:
        choice = protocol.ChunkChoice(delta=delta)
        return _event(
            protocol.ChatCompletionChunk(
                id=self.id, created=self.created, model=self.model, choices=[choice]
            )
        )

    def role(self) -> bytes:
        return self._delta(protocol.ChunkDelta(role="assistant", content=""))

    def content(self, text: str) -> bytes:
        return self._delta(protocol.ChunkDelta(content=text))

    def finish(self, answer: Answer) -> bytes:
        choice = protocol.ChunkChoice(
            delta=protocol.ChunkDelta(), finish_reason=protocol.finish_reason(answer)
        )
        chunk = protocol.LastChunk(
            id=self.id,
            created=self.created,
            model=answer.completion.model,
            choices=[choice],
            llm_proxy=cache_extension(answer),
        )
        return _event(chunk)

    def usage(self, answer: Answer) -> bytes:
        return _event(
            protocol.ChatCompletionChunk(
                id=self.id,
                created=self.created,
                model=answer.completion.model,
                choices=[],
                usage=protocol.UsageBody.of(answer.completion.usage),
            )
        )
