"""`llm-proxy`: the command line (serve, simulate, calibrate) and the serving process."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from adapters.outbound.observability.logs import configure_logging
from adapters.outbound.vector import IncompatibleIndex
from adapters.process.config_error import ConfigError
from adapters.process.lifecycle import StartupError, serve_vector_index
from adapters.process.settings import Settings, is_loopback, load_settings
from adapters.process.supervisor import (
    INDEX_FLAG,
    INDEX_SOCKET_FLAG,
    WORKER_FLAG,
    PortTaken,
    SharedPort,
    Supervisor,
    die_with_supervisor,
)
from adapters.process.system import raise_file_limit
from application.calibration import (
    LabelledPair,
    MemoEmbedder,
    ThresholdReport,
    parse_pairs,
    render,
    sweep,
)
from application.ports import Embedder
from application.semantic_cache import CachePolicy, SemanticCache
from container import Container

if TYPE_CHECKING:
    from simulator import RunningSimulator

log = logging.getLogger("llm_proxy")
T = TypeVar("T")


async def serve(container: Container, stop: asyncio.Event) -> None:
    """Starts every resource in order, runs until `stop` is set, then shuts them down in reverse:
    stop accepting and drain in-flight calls within SHUTDOWN_GRACE, await the background cache
    stores, stop the ops server and the cache sweeper, close the clients, flush the spans.
    Raises StartupError when a port cannot be bound, IncompatibleIndex, ConfigError."""
    settings: Settings = container.settings()
    warn_if_open(settings)
    check_file_limit(settings)
    container.metrics().watch(container.upstreams(), container.clock().now)
    try:
        # The last resource: starting it starts the chain under it, in order, and returns only
        # once every one has started or failed (container.init_resources() would start them side
        # by side and could leave one half-started on a failure).
        http_port = await settled(container.http_running.init())
        log.info(
            "serving inferenceproxy.InferenceService on %s:%d (%s; metrics and health on :%d; "
            "OpenAI-compatible HTTP %s); routable models: %s",
            settings.host,
            container.grpc_server().port,
            describe_security(settings),
            container.ops_server().port,
            f"on {settings.http_bind_host}:{http_port}" if http_port else "off (HTTP_PORT=0)",
            ", ".join(container.router().routable()) or "none (no provider has API keys)",
        )
        await stop.wait()
        log.info("shutting down: draining in-flight calls for up to %.1fs", settings.shutdown_grace)
    finally:
        await settled(container.shutdown_resources())


async def settled(result: Awaitable[T] | None) -> T | None:
    """dependency-injector returns None rather than an awaitable when no resource is async."""
    return None if result is None else await result


def warn_if_open(settings: Settings) -> None:
    if settings.authenticates:
        return
    for _, host, port in settings.listeners():
        if is_loopback(host):
            continue
        log.warning(
            "UNAUTHENTICATED: ALLOW_UNAUTHENTICATED=true and no AUTH_TOKENS or "
            "TLS_CLIENT_CA_FILE: anyone who reaches %s:%d spends the configured API keys. Only "
            "run this behind something that authenticates clients (a service mesh, a gateway)",
            host,
            port,
        )


def check_file_limit(settings: Settings) -> None:
    """MAX_CONNECTIONS per listening port needs that many file descriptors, and some more for
    the upstream connections and files: the soft limit goes up to the hard one, and a hard
    limit below the need is said at startup rather than found when accept() fails."""
    soft, _ = raise_file_limit()
    ports = len(settings.listeners())
    needed = settings.max_connections * ports + 2 * settings.upstream_max_connections + 256
    if soft < needed:
        log.warning(
            "the open-file limit (RLIMIT_NOFILE) is %d, below the ~%d that MAX_CONNECTIONS=%d "
            "on %d port(s) needs: raise the hard limit (ulimit -n, LimitNOFILE, the container "
            "runtime's nofile) or lower MAX_CONNECTIONS",
            soft,
            needed,
            settings.max_connections,
            ports,
        )


def describe_security(settings: Settings) -> str:
    tls = "plaintext"
    if settings.tls_cert_file:
        tls = "mTLS" if settings.tls_client_ca_file else "TLS"
    tokens = len(settings.auth_tokens)
    auth = f"{tokens} client token(s)" if tokens else "no client tokens"
    return f"{tls}, {auth}"


SIMULATED_KEYS = {
    "openai_api_keys": "sim-openai-key-1,sim-openai-key-2",
    "gemini_api_keys": "sim-gemini-key-1,sim-gemini-key-2",
    "anthropic_api_keys": "sim-anthropic-key-1,sim-anthropic-key-2",
}


def simulated(settings: Settings, simulator: RunningSimulator) -> Settings:
    """The settings pointed at a local upstream simulator, with its demo keys (never real ones)."""
    return load_settings(
        **{
            **settings.model_dump(exclude=set(SIMULATED_KEYS)),
            **SIMULATED_KEYS,
            "openai_base_url": simulator.openai_base_url,
            "gemini_base_url": simulator.gemini_base_url,
            "anthropic_base_url": simulator.anthropic_base_url,
            "embedding_base_url": (
                simulator.gemini_base_url
                if settings.embedder_kind == "gemini"
                else simulator.openai_base_url
            ),
        }
    )


async def _run(
    settings: Settings, with_simulator: bool, worker: int | None = None,
    index_socket: str | None = None,
) -> None:  # fmt: skip
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with AsyncExitStack() as stack:
        if with_simulator:  # imported here: aiohttp and the simulator are for demos and tests
            from simulator import SimulatorConfig, running_simulator

            demo = SimulatorConfig(unary_latency_s=0.3, ttft_s=0.15, chunk_delay_s=0.03)
            simulator = await stack.enter_async_context(running_simulator(demo))
            settings = simulated(settings, simulator)
            log.warning(
                "UPSTREAM SIMULATOR ENABLED (--simulator): answers are synthetic, from %s; OpenAI, "
                "Gemini and Anthropic are not contacted and configured API keys are not used",
                simulator.base_url,
            )
        container = Container(settings=settings)
        container.worker.override(worker)
        container.index_socket.override(index_socket)
        await serve(container, stop)


async def _run_vector_index(settings: Settings, socket: str) -> None:
    """Until SIGTERM: SIGINT (Ctrl-C reaches the whole process group) is for the workers, which
    still use the index while they drain; the supervisor sends SIGTERM once they are done."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, lambda: None)
    await serve_vector_index(settings, socket, stop)


def calibrate(path: Path, thresholds: str, half: str | None = None) -> int:
    """The labelled pairs through a real cache (embedded backends in a temporary directory, the
    configured embedder): rates per category at SIMILARITY_THRESHOLD, then per threshold."""
    try:
        settings = load_settings(cache_mode="embedded")
        pairs = parse_pairs(path.read_text(), str(path), half)
        start, stop, step = (float(part) for part in thresholds.split(":"))
    except (ConfigError, OSError, ValueError, KeyError) as error:
        print(f"llm-proxy calibrate: {error}", file=sys.stderr)
        return 2
    levels = [round(start + i * step, 4) for i in range(round((stop - start) / step) + 1)]
    try:
        rows = calibration(settings, pairs, [settings.similarity_threshold, *levels])
    except BackendFailed as error:
        print(f"llm-proxy calibrate: {error}", file=sys.stderr)
        return 1
    except Exception as error:  # the embedder (an API) failed: say so, no traceback
        print(f"llm-proxy calibrate: embedding failed: {error}", file=sys.stderr)
        return 1
    print(f"embedder {settings.embedder_kind}; {len(pairs)} pairs from {path}"
          + (f" (half {half})" if half else ""))  # fmt: skip
    print(render(rows[0], rows[1:]))
    return 0


class BackendFailed(Exception):
    """A cache backend failed during a calibration: its figures would be wrong."""


def calibration(
    settings: Settings,
    pairs: Sequence[LabelledPair],
    thresholds: Sequence[float],
    embedder: Embedder | None = None,
) -> list[ThresholdReport]:
    """A report per threshold: the pairs through a real cache with embedded backends in a
    temporary directory, and `embedder` (default: the configured one)."""
    with tempfile.TemporaryDirectory() as directory:
        container = Container(settings=settings.model_copy(update={"cache_dir": directory}))
        caches: list[SemanticCache] = []
        memo = MemoEmbedder(embedder or container.embedder())
        judge = container.judge()

        def cache_at(threshold: float) -> SemanticCache:
            policy = CachePolicy(threshold=threshold, ttl=3600.0, timeout=120.0)
            caches.append(SemanticCache(
                memo, container.vector_index(), container.response_store(), policy, judge,
                container.clock(), container.metrics(), container.tracer(),
            ))  # fmt: skip
            return caches[-1]

        async def run() -> list[ThresholdReport]:
            try:
                await memo.prefill(pairs, judge)
                return await sweep(cache_at, memo, pairs, thresholds, judge)
            finally:
                await container.embedding_http().aclose()
                if caches:
                    await caches[0].close()  # they share the index and the store

        rows = asyncio.run(run())
    if any(state == "down" for cache in caches for state in cache.states.values()):
        raise BackendFailed("a cache backend failed; the figures would be wrong")
    return rows


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llm-proxy",
        description="gRPC inference proxy for OpenAI, Gemini and Anthropic. Configured by "
        "environment variables (see the README's settings table).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser(
        "serve",
        help="run the proxy (gRPC, and the OpenAI-compatible HTTP API)",
        description="Run inferenceproxy.InferenceService on GRPC_HOST:GRPC_PORT and the "
        "OpenAI-compatible HTTP API on HTTP_HOST:HTTP_PORT (HTTP_PORT=0: off) until SIGTERM "
        "or SIGINT, then drain in-flight calls for up to SHUTDOWN_GRACE. WORKERS processes "
        "(default: the CPU quota) share the ports; see docs/deployment.md. Without AUTH_TOKENS "
        "(or mTLS) it listens on loopback only; see docs/security.md. An invalid setting exits "
        "with code 2 and a message naming it.",
    )
    serve_cmd.add_argument(WORKER_FLAG, type=int, help=argparse.SUPPRESS)
    serve_cmd.add_argument(INDEX_SOCKET_FLAG, help=argparse.SUPPRESS)
    serve_cmd.add_argument(INDEX_FLAG, metavar="SOCKET", help=argparse.SUPPRESS)
    serve_cmd.add_argument(
        "--simulator",
        action="store_true",
        help="answer through a built-in upstream simulator on loopback instead of OpenAI and "
        "Gemini (synthetic answers, demo keys; for a first run, demos and tests)",
    )
    commands.add_parser(
        "simulate",
        help="run only the upstream simulator (OpenAI- and Gemini-compatible HTTP)",
        description=SIMULATE,
    )
    calibrate_cmd = commands.add_parser(
        "calibrate",
        help="show the cache's hit and false-hit rates on labelled prompt pairs",
        description='Read JSON lines {"a": ..., "b": ..., "should_hit": true|false, '
        '"category": ...}, store each "a" in a fresh cache (embedded backends in a temporary '
        'directory, the configured EMBEDDER and EMBEDDING_MODEL) and look "b" up, as the proxy '
        "does. Print the share of should-hit pairs that hit and of must-not pairs that hit, per "
        "category at SIMILARITY_THRESHOLD, then per threshold. Use it to choose "
        "SIMILARITY_THRESHOLD.",
    )
    calibrate_cmd.add_argument("pairs", type=Path, help="JSONL file of labelled pairs")
    calibrate_cmd.add_argument(
        "--thresholds",
        default="0.80:0.99:0.01",
        help="start:stop:step, inclusive (default %(default)s)",
    )
    calibrate_cmd.add_argument(
        "--half", help='only the pairs whose "half" field has this value (e.g. tune, check)'
    )
    return parser


SIMULATE = (
    "Serve OpenAI- and Gemini-compatible endpoints with synthetic answers, latency and fault "
    "injection; see docs/simulator.md."
)


def simulate(options: list[str]) -> int:
    from simulator import cli as simulator_cli  # aiohttp: only for this command

    parser = argparse.ArgumentParser(prog="llm-proxy simulate", description=SIMULATE)
    simulator_cli.add_arguments(parser)
    return simulator_cli.run(parser.parse_args(options))


def logs_as_json(settings: Settings, tty: bool) -> bool:
    """LOG_FORMAT, or by default text for a person at a terminal and JSON for a collector."""
    return settings.log_format == "json" if settings.log_format else not tty


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["simulate"]:  # its options (and --help) are the simulator's own
        return simulate(argv[1:])
    args = _parser().parse_args(argv)
    if args.command == "calibrate":
        return calibrate(args.pairs, args.thresholds, args.half)
    try:
        settings = load_settings()
    except ConfigError as error:
        print(f"llm-proxy: {error}", file=sys.stderr)
        return 2
    as_json = logs_as_json(settings, sys.stderr.isatty())
    configure_logging(settings.log_level, as_json, secrets=settings.secrets())
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per upstream call is noise
    if args.worker is not None or args.vector_index is not None:
        die_with_supervisor()  # a supervisor's child: no orphan outlives it
    if args.vector_index is not None:
        with asyncio.Runner(loop_factory=uvloop_factory()) as runner:
            runner.run(_run_vector_index(settings, args.vector_index))
        return 0
    if settings.worker_count > 1 and args.worker is None:
        if args.simulator:
            log.warning("--simulator runs one worker (WORKERS=%d ignored)", settings.worker_count)
        else:
            return supervise(settings)
    try:
        with asyncio.Runner(loop_factory=uvloop_factory()) as runner:
            runner.run(_run(settings, args.simulator, args.worker, args.index_socket))
    except (ConfigError, IncompatibleIndex, StartupError) as error:
        print(f"llm-proxy: {error}", file=sys.stderr)
        return 2
    return 0


def supervise(settings: Settings) -> int:
    """WORKERS > 1: this process holds the ports and runs the workers (process/supervisor.py)."""
    ports = [
        SharedPort("GRPC_PORT", settings.host, settings.grpc_port),
        SharedPort("METRICS_PORT", settings.host, settings.metrics_port),
    ]
    if settings.http_port:
        ports.append(SharedPort("HTTP_PORT", settings.http_bind_host, settings.http_port))
    supervisor = Supervisor(
        settings.worker_count, ports, settings.shutdown_grace,
        shared_index=settings.cache_mode == "embedded",
    )  # fmt: skip
    try:
        return supervisor.run()
    except PortTaken as error:
        print(f"llm-proxy: {error}", file=sys.stderr)
        return 2


def uvloop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when it is installed (a dependency on Linux and macOS): it cuts the
    proxy's CPU per request by about a third (docs/benchmarks.md); else asyncio's own."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def cli() -> None:
    sys.exit(main())


if __name__ == "__main__":
    cli()
