"""Configuration of the upstream simulator: one frozen dataclass with every knob."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from simulator.faults import FaultSpecError, parse_fault_spec

EmbeddingMode = Literal["words", "hash"]


@dataclass(frozen=True, slots=True, kw_only=True)
class SimulatorConfig:
    """Every knob of the simulator. Durations are seconds (floats).

    Latency
        unary_latency_s: wait before a unary (non-streaming) answer.
        ttft_s: time to first token of a stream (after the 200 headers are sent).
        chunk_delay_s: delay between two stream events.
        jitter_s: a uniform random ``[0, jitter_s)`` added to each of the waits above
            (seeded by ``seed``, so a run is reproducible).

    Content
        answer_words: length of a generated answer, in words (= tokens).
        echo_words: how many words of the last user message are echoed in the answer.
        openai_chunk_words / gemini_chunk_words: words per stream event.
        openai_embedding_dim / gemini_embedding_dim: default embedding dimensions
            (a request's ``dimensions`` / ``outputDimensionality`` overrides them).
        embedding_mode: ``"words"`` (bag of hashed words: texts sharing words are close,
            word order is ignored) or ``"hash"`` (one pseudo-random vector per text).
        models: accepted model names; empty accepts every model (unknown -> 404).

    Faults
        faults: run-level fault spec applied to every request (see docs/simulator.md).
        fault_header: honour the ``x-sim-fault`` request header.
        prompt_markers: honour ``[[sim:...]]`` markers inside prompts / embedded texts.
        invalid_keys: keys (raw, or their simulator fingerprint) that always get 401.
        rate_limited_keys: keys (raw or fingerprint) that always get 429.
        key_rate_limit: requests allowed per key per ``key_rate_window_s`` (0 = unlimited).
        retry_after_s: retry delay advertised by a 429 that does not give its own.
        gemini_invalid_key_status: HTTP status for an invalid Gemini key (401 by default;
            the production API answers 400 INVALID_ARGUMENT with reason API_KEY_INVALID,
            set 400 to reproduce that exactly).
        gemini_sse_crlf: terminate Gemini SSE events with CRLF CRLF like the real API.
        stall_timeout_s: how long a stalled response hangs before the simulator drops it.
        seed: seed of the random generator behind ``%`` faults and jitter.
    """

    unary_latency_s: float = 0.0
    ttft_s: float = 0.0
    chunk_delay_s: float = 0.0
    jitter_s: float = 0.0

    answer_words: int = 24
    echo_words: int = 6
    openai_chunk_words: int = 1
    gemini_chunk_words: int = 4
    openai_embedding_dim: int = 1536
    gemini_embedding_dim: int = 768
    embedding_mode: EmbeddingMode = "words"
    models: frozenset[str] = frozenset()

    faults: str = ""
    fault_header: bool = True
    prompt_markers: bool = True
    invalid_keys: frozenset[str] = frozenset()
    rate_limited_keys: frozenset[str] = frozenset()
    key_rate_limit: int = 0
    key_rate_window_s: float = 60.0
    retry_after_s: float = 1.0
    gemini_invalid_key_status: int = 401
    gemini_sse_crlf: bool = True
    stall_timeout_s: float = 300.0
    seed: int = 0

    def __post_init__(self) -> None:
        # Accept any iterable of strings for the set-valued knobs, store frozensets.
        for name in ("models", "invalid_keys", "rate_limited_keys"):
            value = getattr(self, name)
            if isinstance(value, str):
                raise ValueError(f"SimulatorConfig.{name} must be a set of strings, not a str")
            object.__setattr__(self, name, frozenset(value))
        for name in (
            "unary_latency_s",
            "ttft_s",
            "chunk_delay_s",
            "jitter_s",
            "retry_after_s",
            "stall_timeout_s",
        ):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"SimulatorConfig.{name} must be a finite number >= 0")
        if not math.isfinite(self.key_rate_window_s) or self.key_rate_window_s <= 0:
            raise ValueError("SimulatorConfig.key_rate_window_s must be > 0")
        for name in ("answer_words", "openai_chunk_words", "gemini_chunk_words"):
            if getattr(self, name) < 1:
                raise ValueError(f"SimulatorConfig.{name} must be >= 1")
        for name in ("openai_embedding_dim", "gemini_embedding_dim"):
            if not 1 <= getattr(self, name) <= 65536:
                raise ValueError(f"SimulatorConfig.{name} must be in [1, 65536]")
        if self.echo_words < 0 or self.key_rate_limit < 0:
            raise ValueError("SimulatorConfig.echo_words and key_rate_limit must be >= 0")
        if self.embedding_mode not in ("words", "hash"):
            raise ValueError("SimulatorConfig.embedding_mode must be 'words' or 'hash'")
        if self.gemini_invalid_key_status not in (400, 401, 403):
            raise ValueError("SimulatorConfig.gemini_invalid_key_status must be 400, 401 or 403")
        try:
            parse_fault_spec(self.faults)
        except FaultSpecError as exc:
            raise ValueError(f"SimulatorConfig.faults: {exc}") from exc
