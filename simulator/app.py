"""The upstream simulator: an aiohttp app imitating the OpenAI, Gemini and Anthropic HTTP APIs.

Entry points: :func:`build_app`, :func:`serve` (runs until cancelled) and
:func:`running_simulator` (tests: an ephemeral port on 127.0.0.1).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from simulator import anthropic_api, gemini_api, openai_api
from simulator.config import SimulatorConfig
from simulator.content import (
    Answer,
    conversation_digest,
    count_tokens,
    embed_text,
    generate_answer,
    key_fingerprint,
)
from simulator.faults import (
    BODY_NAMES,
    STREAM_POSITION_NAMES,
    FaultItem,
    FaultPlan,
    FaultResolver,
    FaultSource,
    FaultSpecError,
    find_markers,
    parse_fault_spec,
)
from simulator.stats import (
    ANTHROPIC_MESSAGES,
    ANTHROPIC_MODELS,
    ANTHROPIC_STREAM,
    GEMINI_BATCH_EMBED,
    GEMINI_EMBED,
    GEMINI_GENERATE,
    GEMINI_MODELS,
    GEMINI_STREAM,
    OPENAI_CHAT,
    OPENAI_CHAT_STREAM,
    OPENAI_EMBEDDINGS,
    OPENAI_MODELS,
    SimulatorStats,
)
from simulator.wire import (
    ApiError,
    Dialect,
    EmbeddingRequest,
    GenerationRequest,
    RateState,
    StreamStyle,
    body_fault,
    dump_pretty,
    json_response,
)

__all__ = [
    "FAULT_HEADER",
    "SIMULATOR_KEY",
    "RedactingAccessLogger",
    "RunningSimulator",
    "Simulator",
    "build_app",
    "running_simulator",
    "serve",
]

_log = logging.getLogger("simulator")

#: Request header carrying a per-request fault spec.
FAULT_HEADER = "x-sim-fault"
#: How often waits check whether the client is still connected.
_POLL_S = 0.02


def _client_gone(request: web.BaseRequest) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


@dataclass
class _Exchange:
    """One request in flight."""

    request: web.Request
    dialect: Dialect
    endpoint: str
    key: str = ""
    fingerprint: str = ""
    rate: RateState | None = None
    outcome: str | None = None  # overrides the response status in stats ("499", "reset", ...)
    fired: tuple[str, ...] = ()


@dataclass
class _Window:
    start: float
    count: int = 0


class Simulator:
    """State and request handling of one simulator instance (one per app)."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.stats = SimulatorStats()
        self._rng = random.Random(config.seed)
        self._resolver = FaultResolver(self._rng)
        self._run_faults = parse_fault_spec(config.faults)
        self._windows: dict[str, _Window] = {}
        self._closing = False
        self.openai = openai_api.OpenAIDialect()
        self.anthropic = anthropic_api.AnthropicDialect()
        self.gemini = gemini_api.GeminiDialect(
            invalid_key_status=config.gemini_invalid_key_status, crlf=config.gemini_sse_crlf
        )

    # ------------------------------------------------------------------ admin

    def reset(self) -> None:
        """Zero the stats, the ``*N`` fault counters and the per-key rate windows."""
        self.stats.reset()
        self._resolver.reset()
        self._windows.clear()

    def install(self, app: web.Application) -> None:
        r = app.router
        r.add_post("/v1/chat/completions", self.openai_chat)
        r.add_post("/v1/embeddings", self.openai_embeddings)
        r.add_get("/v1/models", self.openai_models)
        r.add_post("/v1/messages", self.anthropic_messages)
        r.add_post("/v1beta/models/{model_action}", self.gemini_action)
        r.add_post("/v1/models/{model_action}", self.gemini_action)
        r.add_get("/v1beta/models", self.gemini_models)
        r.add_get("/_sim/stats", self._stats_handler)
        r.add_post("/_sim/reset", self._reset_handler)
        r.add_get("/_sim/health", self._health_handler)
        app.on_shutdown.append(self._on_shutdown)

    async def _on_shutdown(self, app: web.Application) -> None:
        self._closing = True  # stalled and slow responses end at their next check

    async def _stats_handler(self, request: web.Request) -> web.Response:
        return json_response(self.stats.snapshot())

    async def _reset_handler(self, request: web.Request) -> web.Response:
        self.reset()
        return json_response({"reset": True})

    async def _health_handler(self, request: web.Request) -> web.Response:
        return json_response({"status": "ok"})

    # -------------------------------------------------------------- handlers

    async def openai_chat(self, request: web.Request) -> web.StreamResponse:
        raw = await self._peek_json(request)
        streaming = isinstance(raw, dict) and raw.get("stream") is True
        endpoint = OPENAI_CHAT_STREAM if streaming else OPENAI_CHAT
        return await self._run(request, self.openai, endpoint, lambda ex: self._chat(ex, raw))

    async def openai_embeddings(self, request: web.Request) -> web.StreamResponse:
        raw = await self._peek_json(request)
        return await self._run(
            request, self.openai, OPENAI_EMBEDDINGS, lambda ex: self._openai_embed(ex, raw)
        )

    async def anthropic_messages(self, request: web.Request) -> web.StreamResponse:
        raw = await self._peek_json(request)
        streaming = isinstance(raw, dict) and raw.get("stream") is True
        endpoint = ANTHROPIC_STREAM if streaming else ANTHROPIC_MESSAGES
        return await self._run(
            request, self.anthropic, endpoint, lambda ex: self._anthropic(ex, raw)
        )

    async def openai_models(self, request: web.Request) -> web.StreamResponse:
        if "x-api-key" in request.headers:  # Anthropic lists its models at the same path
            return await self._anthropic_models(request)
        models = sorted(self.config.models) or list(openai_api.DEFAULT_MODELS)

        async def work(ex: _Exchange) -> web.StreamResponse:
            return json_response(openai_api.models_response(models))

        return await self._run(request, self.openai, OPENAI_MODELS, work)

    async def _anthropic_models(self, request: web.Request) -> web.StreamResponse:
        models = sorted(self.config.models) or list(anthropic_api.DEFAULT_MODELS)

        async def work(ex: _Exchange) -> web.StreamResponse:
            return json_response(anthropic_api.models_response(models))

        return await self._run(request, self.anthropic, ANTHROPIC_MODELS, work)

    async def gemini_models(self, request: web.Request) -> web.StreamResponse:
        models = sorted(self.config.models) or list(gemini_api.DEFAULT_MODELS)

        async def work(ex: _Exchange) -> web.StreamResponse:
            return json_response(gemini_api.models_response(models))

        return await self._run(request, self.gemini, GEMINI_MODELS, work)

    async def gemini_action(self, request: web.Request) -> web.StreamResponse:
        model, _, action = request.match_info["model_action"].rpartition(":")
        raw = await self._peek_json(request)
        if action == "generateContent":
            return await self._run(
                request,
                self.gemini,
                GEMINI_GENERATE,
                lambda ex: self._gemini_generate(ex, model, raw),
            )
        if action == "streamGenerateContent":
            return await self._run(
                request,
                self.gemini,
                GEMINI_STREAM,
                lambda ex: self._gemini_generate(ex, model, raw),
            )
        if action == "embedContent":
            return await self._run(
                request, self.gemini, GEMINI_EMBED, lambda ex: self._gemini_embed(ex, model, raw)
            )
        if action == "batchEmbedContents":
            return await self._run(
                request,
                self.gemini,
                GEMINI_BATCH_EMBED,
                lambda ex: self._gemini_embed(ex, model, raw),
            )
        return json_response(
            gemini_api.error_body(404, f"Method not found: {action or '(none)'}."), 404
        )

    # ------------------------------------------------------------ the pipeline

    async def _peek_json(self, request: web.Request) -> Any:
        """The parsed body, or ``_INVALID`` when it is not JSON."""
        try:
            data = await request.read()
        except ConnectionError:
            return _INVALID
        try:
            return json.loads(data) if data else _INVALID
        except (ValueError, UnicodeDecodeError):
            return _INVALID

    async def _run(
        self,
        request: web.Request,
        dialect: Dialect,
        endpoint: str,
        work: Callable[[_Exchange], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        ex = _Exchange(request=request, dialect=dialect, endpoint=endpoint)
        self.stats.request_started(endpoint)
        response: web.StreamResponse | None = None
        try:
            response = await self._authorized(ex, work)
            return response
        except asyncio.CancelledError:
            if _client_gone(request):
                self._note_disconnect(ex)
            else:
                ex.outcome = ex.outcome or "cancelled"
            raise
        finally:
            outcome = ex.outcome or (str(response.status) if response is not None else "error")
            self.stats.by_status[outcome] += 1
            self.stats.request_finished()
            level = logging.INFO if ex.fired else logging.DEBUG
            _log.log(
                level,
                "sim %s key=%s -> %s faults=%s",
                endpoint,
                ex.fingerprint or "-",
                outcome,
                ",".join(ex.fired) or "-",
            )

    async def _authorized(
        self, ex: _Exchange, work: Callable[[_Exchange], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        key = ex.dialect.extract_key(ex.request)
        if key is None:
            return ex.dialect.missing_key()
        ex.key, ex.fingerprint = key, key_fingerprint(key)
        self.stats.key_seen(ex.fingerprint, ex.endpoint)
        if self._listed(key, self.config.invalid_keys):
            self._count_fault(ex, "invalid_key")
            return ex.dialect.invalid_key(key, real=False)
        if self._listed(key, self.config.rate_limited_keys):
            self._count_fault(ex, "rate_limited_key")
            return ex.dialect.rate_limited(self.config.retry_after_s, model=None, limit=None)
        admitted, ex.rate = self._consume_window(ex.fingerprint)
        if not admitted and ex.rate is not None:
            self._count_fault(ex, "key_rate_limit")
            return ex.dialect.rate_limited(ex.rate.reset_s, model=None, limit=ex.rate.limit)
        try:
            return await work(ex)
        except ApiError as err:
            return ex.dialect.api_error(err)

    @staticmethod
    def _listed(key: str, entries: frozenset[str]) -> bool:
        return bool(entries) and (key in entries or key_fingerprint(key) in entries)

    def _consume_window(self, fingerprint: str) -> tuple[bool, RateState | None]:
        limit = self.config.key_rate_limit
        if not limit:
            return True, None
        now = time.monotonic()
        window = self._windows.get(fingerprint)
        if window is None or now - window.start >= self.config.key_rate_window_s:
            window = self._windows[fingerprint] = _Window(start=now)
        reset = max(window.start + self.config.key_rate_window_s - now, 0.001)
        if window.count >= limit:
            return False, RateState(limit=limit, remaining=0, reset_s=reset)
        window.count += 1
        return True, RateState(limit=limit, remaining=limit - window.count, reset_s=reset)

    def _count_fault(self, ex: _Exchange, label: str) -> None:
        self.stats.faults[label] += 1
        ex.fired = (*ex.fired, label)

    def _plan(self, ex: _Exchange, marker_texts: Sequence[str], scope: str) -> FaultPlan:
        sources: list[FaultSource] = []
        header = ex.request.headers.get(FAULT_HEADER, "")
        try:
            if self.config.fault_header and header.strip():
                sources.append(FaultSource("header", parse_fault_spec(header), scope))
            if self.config.prompt_markers:
                for spec in find_markers(marker_texts):
                    sources.append(FaultSource("prompt", parse_fault_spec(spec), scope))
        except FaultSpecError as exc:
            raise ApiError(400, f"Invalid simulator fault spec: {exc}") from exc
        if self._run_faults:
            sources.append(FaultSource("run", self._run_faults, ""))
        family = "embed" if "embed" in ex.endpoint else "chat"
        plan = self._resolver.resolve(sources, frozenset({family, ex.dialect.provider}))
        for text in plan.fired:
            self._count_fault(ex, re.split(r"[:*%@]", text, maxsplit=1)[0])
        return plan

    def _check_model(self, ex: _Exchange, model: str, action: str) -> None:
        if self.config.models and model not in self.config.models:
            raise ex.dialect.model_not_found(model, action)
        self.stats.by_model[model] += 1

    async def _prelude(
        self, ex: _Exchange, plan: FaultPlan, model: str
    ) -> web.StreamResponse | None:
        """Apply the extra delay and the faults that answer before any content."""
        if plan.extra_delay_s and not await self._pause(ex, plan.extra_delay_s):
            return self._gone_response(ex)
        fault = plan.terminal
        if fault is None or fault.name in STREAM_POSITION_NAMES:
            return None
        if fault.name == "status" and fault.status is not None:
            if fault.status == 429:
                retry = fault.arg if fault.arg is not None else self.config.retry_after_s
                return ex.dialect.rate_limited(retry, model=model, limit=None)
            if fault.status == 401:
                return ex.dialect.invalid_key(ex.key, real=False)
            return ex.dialect.error(fault.status)
        if fault.name == "quota":
            return ex.dialect.quota_exceeded(model)
        if fault.name == "badkey":
            return ex.dialect.invalid_key(ex.key, real=True)
        if fault.name in BODY_NAMES:
            return body_fault(fault.name, streaming=ex.endpoint in _STREAM_ENDPOINTS)
        # reset: drop the connection without any response
        _reset_connection(ex.request)
        ex.outcome = "reset"
        return web.Response(status=500)

    # ----------------------------------------------------------- generation

    def _answer(self, req: GenerationRequest, plan: FaultPlan) -> Answer:
        digest = conversation_digest(req.model, req.turns)
        return generate_answer(
            digest,
            req.last_user_text,
            words=plan.words or self.config.answer_words,
            echo_words=self.config.echo_words,
            max_tokens=req.max_tokens,
            prompt_tokens=(
                plan.prompt_tokens
                if plan.prompt_tokens is not None
                else sum(count_tokens(text) for _, text in req.turns)
            ),
        )

    async def _chat(self, ex: _Exchange, raw: Any) -> web.StreamResponse:
        if raw is _INVALID:
            raise ex.dialect.invalid_json()
        req = openai_api.parse_chat(raw)
        self._check_model(ex, req.model, "chat.completions")
        scope = conversation_digest(req.model, req.turns).hex()
        plan = self._plan(ex, req.marker_texts, scope)
        early = await self._prelude(ex, plan, req.model)
        if early is not None:
            return early
        answer = self._answer(req, plan)
        completion_id, created = openai_api.new_completion_id(), int(time.time())
        headers = ex.dialect.success_headers(ex.rate)
        if not req.stream:
            payload = openai_api.chat_completion(
                completion_id=completion_id, created=created, model=req.model, answer=answer
            )
            return await self._send_json(ex, payload, plan, headers)
        events = openai_api.chat_stream_events(
            completion_id=completion_id,
            created=created,
            model=req.model,
            answer=answer,
            words_per_chunk=self.config.openai_chunk_words,
            include_usage=req.include_usage,
        )
        return await self._send_stream(ex, events, openai_api.STREAM_STYLE, plan, headers)

    async def _anthropic(self, ex: _Exchange, raw: Any) -> web.StreamResponse:
        if raw is _INVALID:
            raise ex.dialect.invalid_json()
        req = anthropic_api.parse_messages(raw)
        self._check_model(ex, req.model, "messages")
        scope = conversation_digest(req.model, req.turns).hex()
        plan = self._plan(ex, req.marker_texts, scope)
        early = await self._prelude(ex, plan, req.model)
        if early is not None:
            return early
        answer = self._answer(req, plan)
        message_id = anthropic_api.new_message_id()
        headers = ex.dialect.success_headers(ex.rate)
        if not req.stream:
            payload = anthropic_api.message(message_id=message_id, model=req.model, answer=answer)
            return await self._send_json(ex, payload, plan, headers)
        events = anthropic_api.stream_events(
            message_id=message_id,
            model=req.model,
            answer=answer,
            words_per_chunk=self.config.openai_chunk_words,
        )
        return await self._send_stream(ex, events, anthropic_api.STREAM_STYLE, plan, headers)

    async def _gemini_generate(self, ex: _Exchange, model: str, raw: Any) -> web.StreamResponse:
        streaming = ex.endpoint == GEMINI_STREAM
        action = "streamGenerateContent" if streaming else "generateContent"
        if raw is _INVALID:
            raise ex.dialect.invalid_json()
        req = gemini_api.parse_generate(model, raw, stream=streaming)
        self._check_model(ex, model, action)
        scope = conversation_digest(req.model, req.turns).hex()
        plan = self._plan(ex, req.marker_texts, scope)
        early = await self._prelude(ex, plan, model)
        if early is not None:
            return early
        answer = self._answer(req, plan)
        response_id = gemini_api.new_response_id()
        headers = ex.dialect.success_headers(ex.rate)
        if not streaming:
            payload = gemini_api.generate_response(
                model=model, answer=answer, response_id=response_id
            )
            return await self._send_json(ex, payload, plan, headers)
        events = gemini_api.stream_events(
            model=model,
            answer=answer,
            response_id=response_id,
            words_per_chunk=self.config.gemini_chunk_words,
        )
        sse = ex.request.query.get("alt") == "sse"
        style = self.gemini.sse_style if sse else self.gemini.array_style
        return await self._send_stream(ex, events, style, plan, headers)

    # ----------------------------------------------------------- embeddings

    def _vectors(self, req: EmbeddingRequest, default_dim: int) -> list[list[float]]:
        return [
            embed_text(
                text, model=req.model, dim=dim or default_dim, mode=self.config.embedding_mode
            )
            for text, dim in zip(req.texts, req.dimensions, strict=True)
        ]

    async def _openai_embed(self, ex: _Exchange, raw: Any) -> web.StreamResponse:
        if raw is _INVALID:
            raise ex.dialect.invalid_json()
        req = openai_api.parse_embeddings(raw)
        self._check_model(ex, req.model, "embeddings")
        plan = self._plan(ex, req.marker_texts, _embedding_scope(req))
        early = await self._prelude(ex, plan, req.model)
        if early is not None:
            return early
        payload = openai_api.embeddings_response(
            model=req.model,
            vectors=self._vectors(req, self.config.openai_embedding_dim),
            texts=req.texts,
            encoding=req.encoding,
        )
        return await self._send_json(ex, payload, plan, ex.dialect.success_headers(ex.rate))

    async def _gemini_embed(self, ex: _Exchange, model: str, raw: Any) -> web.StreamResponse:
        batch = ex.endpoint == GEMINI_BATCH_EMBED
        if raw is _INVALID:
            raise ex.dialect.invalid_json()
        if batch:
            req = gemini_api.parse_batch_embed(model, raw)
        else:
            req = gemini_api.parse_embed(model, raw)
        self._check_model(ex, model, "batchEmbedContents" if batch else "embedContent")
        plan = self._plan(ex, req.marker_texts, _embedding_scope(req))
        early = await self._prelude(ex, plan, model)
        if early is not None:
            return early
        vectors = self._vectors(req, self.config.gemini_embedding_dim)
        payload = (
            gemini_api.batch_embed_response(vectors)
            if batch
            else gemini_api.embed_response(vectors[0])
        )
        return await self._send_json(ex, payload, plan, ex.dialect.success_headers(ex.rate))

    # ------------------------------------------------------------ transport

    def _jittered(self, seconds: float) -> float:
        if self.config.jitter_s:
            return seconds + self._rng.random() * self.config.jitter_s
        return seconds

    def _note_disconnect(self, ex: _Exchange) -> None:
        if ex.outcome != "499":
            ex.outcome = "499"
            self.stats.client_disconnected(ex.endpoint)

    def _gone_response(self, ex: _Exchange) -> web.StreamResponse:
        """What a handler returns once the client left (nothing reaches the wire)."""
        return web.Response(status=499)

    async def _pause(self, ex: _Exchange, seconds: float) -> bool:
        """Wait ``seconds``; False as soon as the client disconnects (or on shutdown)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while True:
            if _client_gone(ex.request):
                self._note_disconnect(ex)
                return False
            if self._closing:
                ex.outcome = ex.outcome or "shutdown"
                _reset_connection(ex.request)
                return False
            remaining = deadline - loop.time()
            if remaining <= 0:
                return True
            await asyncio.sleep(min(remaining, _POLL_S))

    async def _stall(self, ex: _Exchange) -> web.StreamResponse:
        """Hang without sending until the client leaves or ``stall_timeout_s`` passes."""
        if await self._pause(ex, self.config.stall_timeout_s):
            ex.outcome = "stall_timeout"
            _reset_connection(ex.request)
        return self._gone_response(ex)

    async def _write(self, ex: _Exchange, resp: web.StreamResponse, data: bytes) -> bool:
        try:
            await resp.write(data)
        except ConnectionError:
            self._note_disconnect(ex)
            return False
        return True

    async def _send_json(
        self,
        ex: _Exchange,
        payload: dict[str, Any],
        plan: FaultPlan,
        headers: dict[str, str],
    ) -> web.StreamResponse:
        if not await self._pause(ex, self._jittered(self.config.unary_latency_s)):
            return self._gone_response(ex)
        body = dump_pretty(payload)
        fault = plan.terminal
        if fault is not None and fault.name == "stall":
            return await self._stall(ex)
        if fault is not None and fault.name == "midstream":
            return ex.dialect.error(500)
        if fault is not None and fault.name == "malformed":
            body = body[: len(body) // 2]
        if fault is not None and fault.name == "truncate":
            resp = web.StreamResponse(status=200, headers=headers)
            resp.content_type = "application/json"
            resp.content_length = len(body)
            try:
                await resp.prepare(ex.request)
                await resp.write(body[: len(body) // 2])
            except ConnectionError:
                self._note_disconnect(ex)
                return resp
            _close_connection(ex.request)
            ex.outcome = "truncated"
            return resp
        return web.Response(
            body=body, content_type="application/json", charset="utf-8", headers=headers
        )

    async def _send_stream(
        self,
        ex: _Exchange,
        events: list[tuple[bytes, bool]],
        style: StreamStyle,
        plan: FaultPlan,
        headers: dict[str, str],
    ) -> web.StreamResponse:
        fault = (
            plan.terminal if plan.terminal and plan.terminal.name in STREAM_POSITION_NAMES else None
        )
        cut = _cut_index(events, fault) if fault is not None else -1
        resp = web.StreamResponse(
            status=200,
            headers={**headers, "Content-Type": style.content_type, "Cache-Control": "no-cache"},
        )
        try:
            await resp.prepare(ex.request)
        except ConnectionError:
            self._note_disconnect(ex)
            return resp
        self.stats.streams_started += 1
        chunk_delay = (
            plan.chunk_delay_s if plan.chunk_delay_s is not None else self.config.chunk_delay_s
        )
        sent = 0
        for index, (payload, _) in enumerate(events):
            wait = self.config.ttft_s if index == 0 else chunk_delay
            if not await self._pause(ex, self._jittered(wait)):
                return resp
            if index == cut and fault is not None:
                if fault.name == "truncate":
                    _close_connection(ex.request)
                    ex.outcome = "truncated"
                    return resp
                if fault.name == "stall":
                    await self._stall(ex)
                    return resp
                if fault.name == "midstream":
                    error = style.frame(ex.dialect.stream_error_payload(), sent)
                    if await self._write(ex, resp, error + style.end(sent + 1, after_error=True)):
                        await self._finish(ex, resp)
                    ex.outcome = ex.outcome or "stream_error"
                    return resp
                # malformed: half of the next event, then the stream goes on
                if not await self._write(ex, resp, style.frame(payload[: len(payload) // 2], sent)):
                    return resp
                sent += 1
            if not await self._write(ex, resp, style.frame(payload, sent)):
                return resp
            sent += 1
        if not await self._write(ex, resp, style.end(sent)):
            return resp
        if await self._finish(ex, resp):
            self.stats.streams_completed += 1
        return resp

    async def _finish(self, ex: _Exchange, resp: web.StreamResponse) -> bool:
        try:
            await resp.write_eof()
        except ConnectionError:
            self._note_disconnect(ex)
            return False
        return True


class _Invalid:
    """Marker for a request body that is not valid JSON."""


_INVALID: Any = _Invalid()


def _embedding_scope(req: EmbeddingRequest) -> str:
    return conversation_digest(req.model, [("input", t) for t in req.texts]).hex()


def _cut_index(events: Sequence[tuple[bytes, bool]], fault: FaultItem) -> int:
    """Index of the event before which a stream fault strikes: after N content events
    (N = the fault's argument, default 1), and never after the last event."""
    wanted = int(fault.arg) if fault.arg is not None else 1
    seen = 0
    for index, (_, has_content) in enumerate(events):
        if seen >= wanted:
            return min(index, len(events) - 1)
        if has_content:
            seen += 1
    return len(events) - 1


def _close_connection(request: web.BaseRequest) -> None:
    """Close after flushing what was written (FIN): the body ends early."""
    transport = request.transport
    if transport is not None:
        transport.close()


def _reset_connection(request: web.BaseRequest) -> None:
    """Drop the connection at once with a TCP RST, discarding unsent data."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class RedactingAccessLogger(AbstractAccessLogger):
    """Access log without query strings (Gemini's ``?key=`` must never reach a log)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            "%s %s %s %s %.1fms",
            request.remote,
            request.method,
            request.path,
            response.status,
            time * 1000,
        )


SIMULATOR_KEY = web.AppKey("simulator", Simulator)
_STREAM_ENDPOINTS = frozenset({OPENAI_CHAT_STREAM, GEMINI_STREAM, ANTHROPIC_STREAM})


def build_app(config: SimulatorConfig | None = None) -> web.Application:
    """The simulator as an aiohttp application (``app[SIMULATOR_KEY]`` is its state)."""
    simulator = Simulator(config or SimulatorConfig())
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[SIMULATOR_KEY] = simulator
    simulator.install(app)
    return app


def _runner(app: web.Application, shutdown_timeout: float) -> web.AppRunner:
    return web.AppRunner(
        app,
        access_log_class=RedactingAccessLogger,
        handle_signals=False,
        shutdown_timeout=shutdown_timeout,
    )


async def serve(
    config: SimulatorConfig,
    host: str = "127.0.0.1",
    port: int = 8787,
    *,
    shutdown_timeout: float = 5.0,
) -> None:
    """Serve the simulator on ``host:port`` until cancelled."""
    runner = _runner(build_app(config), shutdown_timeout)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        _log.info("upstream simulator listening on %s", site.name)
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


@dataclass(frozen=True)
class RunningSimulator:
    """A simulator serving on loopback.

    ``base_url`` is the server root (``http://127.0.0.1:PORT``); ``openai_base_url`` adds
    ``/v1`` as OpenAI clients expect; Gemini clients take the root and add ``/v1beta``.
    """

    base_url: str
    simulator: Simulator = field(repr=False)

    @property
    def openai_base_url(self) -> str:
        return f"{self.base_url}/v1"

    @property
    def gemini_base_url(self) -> str:
        return self.base_url

    @property
    def anthropic_base_url(self) -> str:
        return self.base_url

    @property
    def stats(self) -> SimulatorStats:
        return self.simulator.stats

    @property
    def config(self) -> SimulatorConfig:
        return self.simulator.config


@contextlib.asynccontextmanager
async def running_simulator(
    config: SimulatorConfig | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    shutdown_timeout: float = 1.0,
) -> AsyncIterator[RunningSimulator]:
    """Run the simulator for the duration of the block (port 0: an ephemeral port)."""
    app = build_app(config)
    runner = _runner(app, shutdown_timeout)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        display = f"[{bound_host}]" if ":" in bound_host else bound_host
        yield RunningSimulator(
            base_url=f"http://{display}:{bound_port}", simulator=app[SIMULATOR_KEY]
        )
    finally:
        await runner.cleanup()
