from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from adapters.outbound.observability.http import OpsServer, Readiness
from adapters.outbound.observability.prometheus import PrometheusMetrics
from application.resilience import Upstream
from domain.circuit_breaker import CircuitBreaker, Verdict
from domain.key_pool import ApiKey, KeyPool
from domain.model import CacheStatus, Usage
from tests.fakes import FakeProvider

pytestmark = pytest.mark.integration


@dataclass
class FakeProcess:
    serving: bool = True
    routable: bool = True
    backends: dict[str, str] = field(default_factory=lambda: {"redis": "up"})

    def readiness(self) -> Readiness:
        async def qdrant() -> str:
            await asyncio.sleep(0)
            return self.backends.get("qdrant", "unknown")

        return Readiness(
            serving=lambda: self.serving,
            routable=lambda: self.routable,
            backends={"redis": lambda: self.backends["redis"], "qdrant": qdrant},
            timeout=0.2,
        )


@dataclass
class Ops:
    url: str
    http: aiohttp.ClientSession
    metrics: PrometheusMetrics
    process: FakeProcess


@pytest.fixture
async def ops() -> AsyncIterator[Ops]:
    metrics, process = PrometheusMetrics(), FakeProcess()
    server = OpsServer(metrics, process.readiness(), host="127.0.0.1", port=0)
    port = await server.start()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            yield Ops(f"http://127.0.0.1:{port}", http, metrics, process)
    finally:
        await server.stop()


async def test_metrics_are_scraped_in_the_text_format(ops: Ops) -> None:
    m = ops.metrics
    m.request_started()
    m.request_finished("gemini", "gemini-2.0-flash", CacheStatus.SEMANTIC, "ok", 0.02)
    m.tokens("gemini", "gemini-2.0-flash", Usage(input_tokens=5, output_tokens=7))
    m.cache_lookup(CacheStatus.SEMANTIC, 0.96)
    breaker = CircuitBreaker("openai", failure_threshold=1, cooldown=30.0)
    breaker.record(breaker.admit(0.0), Verdict.FAILURE, 0.0)
    keys = KeyPool("openai", [ApiKey("sk-ops-test")], 30.0)
    m.watch({"openai": Upstream(FakeProvider("openai"), keys, breaker)}, lambda: 1.0)

    async with ops.http.get(f"{ops.url}/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await response.text()

    families = {f.name: f for f in text_string_to_metric_families(text)}
    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in families.values()
        for s in family.samples
    }
    model = (("model", "gemini-2.0-flash"), ("provider", "gemini"))
    assert families["token_usage"].type == "counter"
    assert values["token_usage_total", (("direction", "input"), *model)] == 5
    assert values["token_usage_total", (("direction", "output"), *model)] == 7
    assert families["request_latency_seconds"].type == "histogram"
    latency = (("cache_status", "semantic"), *model)
    assert values["request_latency_seconds_count", latency] == 1
    assert values["requests_total", (("status", "ok"),)] == 1
    assert values["active_requests", ()] == 0
    assert values["cache_hit_ratio", ()] == 1
    assert values["circuit_breaker_state", (("provider", "openai"),)] == 1
    assert "process_cpu_seconds_total" in text


async def test_openmetrics_is_served_when_asked_for(ops: Ops) -> None:
    accept = "application/openmetrics-text; version=1.0.0"
    async with ops.http.get(f"{ops.url}/metrics", headers={"Accept": accept}) as response:
        assert response.headers["Content-Type"].startswith("application/openmetrics-text")
        assert (await response.text()).endswith("# EOF\n")


async def test_healthz_answers_while_the_process_runs(ops: Ops) -> None:
    ops.process.serving = False  # liveness does not depend on readiness
    async with ops.http.get(f"{ops.url}/healthz") as response:
        assert response.status == 200
        assert await response.text() == "ok"


async def readyz(ops: Ops) -> tuple[int, dict[str, object]]:
    async with ops.http.get(f"{ops.url}/readyz") as response:
        return response.status, await response.json()


async def test_ready_lists_checks_and_backends(ops: Ops) -> None:
    assert await readyz(ops) == (
        200,
        {
            "ready": True,
            "checks": {"serving": True, "routable": True},
            "backends": {"redis": "up", "qdrant": "unknown"},
        },
    )


async def test_draining_or_unroutable_is_not_ready(ops: Ops) -> None:
    ops.process.serving = False
    status, body = await readyz(ops)
    assert status == 503
    assert body["checks"] == {"serving": False, "routable": True}

    ops.process.serving, ops.process.routable = True, False
    status, body = await readyz(ops)
    assert status == 503
    assert body["checks"] == {"serving": True, "routable": False}

    ops.process.routable = True
    assert (await readyz(ops))[0] == 200


async def test_a_down_cache_backend_is_reported_but_keeps_the_replica_ready(ops: Ops) -> None:
    ops.process.backends = {"redis": "down", "qdrant": "down"}
    status, body = await readyz(ops)
    assert status == 200
    assert body["backends"] == {"redis": "down", "qdrant": "down"}


async def test_a_failing_or_slow_probe_counts_as_down_or_not_ready() -> None:
    async def hangs() -> str:
        await asyncio.sleep(10)
        return "up"

    def broken() -> bool:
        raise RuntimeError("boom")

    readiness = Readiness(
        serving=lambda: True, routable=broken, backends={"redis": hangs}, timeout=0.05
    )
    ready, body = await readiness.report()
    assert not ready
    assert body == {
        "ready": False,
        "checks": {"serving": True, "routable": False},
        "backends": {"redis": "down"},
    }


async def test_stop_releases_the_port() -> None:
    server = OpsServer(PrometheusMetrics(), Readiness(lambda: True, lambda: True), "127.0.0.1", 0)
    port = await server.start()
    await server.stop()
    again = OpsServer(PrometheusMetrics(), Readiness(lambda: True, lambda: True), "127.0.0.1", port)
    assert await again.start() == port
    await again.stop()
