"""The composition root: settings -> container -> server; `llm-proxy` starts here."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Mapping

from dependency_injector import containers, providers

from adapters.grpc.server import GrpcServer
from adapters.grpc.servicer import InferenceServicer
from adapters.null_metrics import NullMetrics
from adapters.settings import ConfigError, Settings, load_settings
from adapters.system import AsyncioSleeper, SystemClock, SystemRandom
from application.inference import InferenceService, Timing
from application.ports import Provider, ResponseCache
from application.resilience import Upstream
from domain.backoff import BackoffPolicy
from domain.circuit_breaker import CircuitBreaker
from domain.key_pool import ApiKey, KeyPool
from domain.routing import ModelRouter

log = logging.getLogger("llm_proxy")


def build_upstreams(settings: Settings, adapters: Mapping[str, Provider]) -> dict[str, Upstream]:
    """A key pool and a breaker for every provider that has an adapter and at least one key."""
    upstreams = {}
    for name, adapter in adapters.items():
        keys = [ApiKey(value) for value in settings.api_keys(name)]
        if not keys:
            continue
        upstreams[name] = Upstream(
            adapter,
            KeyPool(name, keys, settings.key_cooldown_default),
            CircuitBreaker(
                name,
                settings.cb_failure_threshold,
                settings.cb_cooldown,
                settings.cb_half_open_probes,
            ),
        )
    return upstreams


def build_router(settings: Settings, upstreams: Mapping[str, Upstream]) -> ModelRouter:
    return ModelRouter(upstreams.keys(), settings.model_routes)


class Container(containers.DeclarativeContainer):
    settings = providers.Dependency(instance_of=Settings)

    clock = providers.Singleton(SystemClock)
    sleeper = providers.Singleton(AsyncioSleeper)
    random = providers.Singleton(SystemRandom)
    metrics = providers.Singleton(NullMetrics)

    # Provider adapters by name; the real OpenAI and Gemini adapters come with their issue.
    provider_adapters: providers.Provider[dict[str, Provider]] = providers.Dict()
    cache: providers.Provider[ResponseCache | None] = providers.Object(None)

    upstreams = providers.Singleton(build_upstreams, settings, provider_adapters)
    router = providers.Singleton(build_router, settings, upstreams)
    backoff = providers.Singleton(
        BackoffPolicy,
        max_retries=settings.provided.max_retries,
        wait_initial=settings.provided.retry_wait_initial,
        wait_max=settings.provided.retry_wait_max,
    )
    timing = providers.Singleton(
        Timing,
        request_timeout=settings.provided.request_timeout,
        cache_timeout=settings.provided.cache_timeout,
    )
    inference = providers.Singleton(
        InferenceService,
        router=router,
        upstreams=upstreams,
        cache=cache,
        backoff=backoff,
        timing=timing,
        clock=clock,
        sleeper=sleeper,
        random=random,
        metrics=metrics,
    )
    servicer = providers.Singleton(InferenceServicer, inference)
    grpc_server = providers.Singleton(
        GrpcServer,
        servicer,
        host=settings.provided.grpc_host,
        port=settings.provided.grpc_port,
        max_message_bytes=settings.provided.max_request_bytes,
        auth_tokens=settings.provided.client_tokens.call(),
    )


async def serve(container: Container, stop: asyncio.Event) -> None:
    """Runs until `stop` is set, then drains in-flight calls within SHUTDOWN_GRACE."""
    settings: Settings = container.settings()
    server: GrpcServer = container.grpc_server()
    port = await server.start()
    routable = container.router().routable()
    log.info(
        "serving inferenceproxy.InferenceService on %s:%d; routable models: %s",
        settings.grpc_host,
        port,
        ", ".join(routable) or "none (no provider has API keys)",
    )
    try:
        await stop.wait()
        log.info("shutting down: draining in-flight calls for up to %.1fs", settings.shutdown_grace)
    finally:
        await server.stop(settings.shutdown_grace)
        await container.inference().drain()
        shutdown = container.shutdown_resources()
        if shutdown is not None:
            await shutdown


async def _run(settings: Settings) -> None:
    container = Container(settings=settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await serve(container, stop)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llm-proxy",
        description="gRPC inference proxy for OpenAI and Gemini. Configured by environment "
        "variables (see the README's settings table).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "serve",
        help="run the gRPC server",
        description="Run inferenceproxy.InferenceService on GRPC_PORT until SIGTERM or SIGINT, "
        "then drain in-flight calls for up to SHUTDOWN_GRACE.",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as error:
        print(f"llm-proxy: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    if args.command == "serve":
        asyncio.run(_run(settings))
    return 0


def cli() -> None:
    sys.exit(main())


if __name__ == "__main__":
    cli()
