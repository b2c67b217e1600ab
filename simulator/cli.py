"""Command line of the simulator: ``llm-proxy simulate --help``.

``add_arguments`` / ``config_from_args`` let another CLI (e.g. ``llm-proxy simulate``) reuse
the same flags.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys

from adapters.process import durations
from simulator.app import serve
from simulator.config import SimulatorConfig


def parse_duration(text: str) -> float:
    """Seconds from ``250ms``, ``1.5s``, ``2m``, ``1h`` or a bare number of seconds."""
    try:
        return durations.parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the simulator's flags (host, port and every SimulatorConfig knob)."""
    d = SimulatorConfig()
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="interface to bind (default %(default)s)")
    add("--port", type=int, default=8787, help="port to bind (default %(default)s)")
    add("--latency", type=parse_duration, default=d.unary_latency_s, help="unary latency")
    add("--ttft", type=parse_duration, default=d.ttft_s, help="stream time to first token")
    add("--chunk-delay", type=parse_duration, default=d.chunk_delay_s, help="delay per chunk")
    add("--jitter", type=parse_duration, default=d.jitter_s, help="random extra per wait")
    add("--answer-words", type=int, default=d.answer_words, help="answer length in words")
    add("--echo-words", type=int, default=d.echo_words, help="prompt words echoed")
    add("--openai-chunk-words", type=int, default=d.openai_chunk_words)
    add("--gemini-chunk-words", type=int, default=d.gemini_chunk_words)
    add("--openai-embedding-dim", type=int, default=d.openai_embedding_dim)
    add("--gemini-embedding-dim", type=int, default=d.gemini_embedding_dim)
    add("--embedding-mode", choices=("words", "hash"), default=d.embedding_mode)
    add("--model", action="append", default=[], help="accepted model (repeat; default: any)")
    add("--fault", default=d.faults, help="run-level fault spec, e.g. '503%%5,429:2%%2'")
    add("--no-fault-header", action="store_true", help="ignore the x-sim-fault header")
    add("--no-prompt-markers", action="store_true", help="ignore [[sim:...]] markers")
    add("--invalid-key", action="append", default=[], help="key (or fingerprint) -> 401")
    add("--rate-limited-key", action="append", default=[], help="key (or fingerprint) -> 429")
    add("--key-rate-limit", type=int, default=d.key_rate_limit, help="requests per window")
    add("--key-rate-window", type=parse_duration, default=d.key_rate_window_s)
    add("--retry-after", type=parse_duration, default=d.retry_after_s, help="429 retry delay")
    add("--gemini-invalid-key-status", type=int, choices=(400, 401, 403), default=401)
    add("--gemini-lf", action="store_true", help="end Gemini SSE events with LF, not CRLF")
    add("--stall-timeout", type=parse_duration, default=d.stall_timeout_s)
    add("--seed", type=int, default=d.seed)


def config_from_args(args: argparse.Namespace) -> SimulatorConfig:
    return SimulatorConfig(
        unary_latency_s=args.latency,
        ttft_s=args.ttft,
        chunk_delay_s=args.chunk_delay,
        jitter_s=args.jitter,
        answer_words=args.answer_words,
        echo_words=args.echo_words,
        openai_chunk_words=args.openai_chunk_words,
        gemini_chunk_words=args.gemini_chunk_words,
        openai_embedding_dim=args.openai_embedding_dim,
        gemini_embedding_dim=args.gemini_embedding_dim,
        embedding_mode=args.embedding_mode,
        models=frozenset(args.model),
        faults=args.fault,
        fault_header=not args.no_fault_header,
        prompt_markers=not args.no_prompt_markers,
        invalid_keys=frozenset(args.invalid_key),
        rate_limited_keys=frozenset(args.rate_limited_key),
        key_rate_limit=args.key_rate_limit,
        key_rate_window_s=args.key_rate_window,
        retry_after_s=args.retry_after,
        gemini_invalid_key_status=args.gemini_invalid_key_status,
        gemini_sse_crlf=not args.gemini_lf,
        stall_timeout_s=args.stall_timeout,
        seed=args.seed,
    )


async def serve_until_signalled(config: SimulatorConfig, host: str, port: int) -> None:
    """``serve`` that stops cleanly on SIGINT / SIGTERM."""
    task = asyncio.create_task(serve(config, host, port))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task


def run(args: argparse.Namespace) -> int:
    """Runs the simulator from parsed `add_arguments` flags until SIGINT / SIGTERM."""
    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"llm-proxy simulate: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    asyncio.run(serve_until_signalled(config, args.host, args.port))
    return 0
