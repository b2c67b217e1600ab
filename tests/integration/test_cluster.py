"""STATE_BACKEND=redis: `llm-proxy serve` processes (two replicas, or WORKERS=2) against one real
Redis and the upstream simulator act as one proxy: key cooldowns, one rate limit, budgets."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import grpc
import httpx
import pytest

from adapters.inbound.grpc.generated import proxy_pb2 as pb
from adapters.inbound.grpc.generated import proxy_pb2_grpc as pb_grpc
from simulator import RunningSimulator, SimulatorConfig, running_simulator
from simulator.content import key_fingerprint
from tests.containers import RedisServer, disposable_redis, redis_server  # noqa: F401
from tests.integration.test_workers import counter, free_port, read_until, start

pytestmark = pytest.mark.integration

BAD_KEY, GOOD_KEY = "sim-key-limited", "sim-key-good"
TOKENS = {"team-a": "tok-team-a", "team-b": "tok-team-b"}


@dataclass
class Replica:
    grpc_port: int
    metrics_port: int
    http_port: int
    stub: pb_grpc.InferenceServiceStub

    async def infer(self, tenant: str, prompt: str) -> pb.InferenceResponse:
        return await self.stub.Infer(
            pb.InferenceRequest(model="gpt-4o", prompt=prompt),
            metadata=(("authorization", f"Bearer {TOKENS[tenant]}"),),
            timeout=20,
        )

    async def metrics(self) -> str:
        async with httpx.AsyncClient() as http:
            return (await http.get(f"http://127.0.0.1:{self.metrics_port}/metrics")).text


@asynccontextmanager
async def replica(sim: RunningSimulator, redis: str, **env: str) -> AsyncIterator[Replica]:
    http_port = free_port()
    settings = {
        "STATE_BACKEND": "redis", "REDIS_ADDR": redis, "HTTP_PORT": str(http_port),
        "OPENAI_API_KEYS": f"{BAD_KEY},{GOOD_KEY}", "GRPC_HOST": "127.0.0.1",
        "AUTH_TOKENS": ",".join(f"{n}={t}" for n, t in TOKENS.items()),
        "RETRY_WAIT_INITIAL": "10ms", "RETRY_WAIT_MAX": "50ms",
        # On this shared 2-core machine a first connect can take longer than the default 50 ms;
        # local state would then be right, but not what these tests look at (the Redis-down test
        # sets the default back)
        "STATE_TIMEOUT": "1s", **env,
    }  # fmt: skip
    process = await start(sim.openai_base_url, **settings)
    try:
        workers = int(env.get("WORKERS", "1"))
        log = await read_until(process, r"serving inferenceproxy\.InferenceService", workers)
        found = re.search(r"GRPC_PORT=(\d+), METRICS_PORT=(\d+)", log)
        assert found, log
        async with grpc.aio.insecure_channel(f"127.0.0.1:{found.group(1)}") as channel:
            yield Replica(
                int(found.group(1)), int(found.group(2)), http_port,
                pb_grpc.InferenceServiceStub(channel),
            )  # fmt: skip
    finally:
        if process.returncode is None:
            process.terminate()
            async with asyncio.timeout(30):
                await process.wait()


async def test_a_key_cooled_on_one_replica_is_not_tried_on_the_other(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    config = SimulatorConfig(rate_limited_keys={BAD_KEY}, retry_after_s=30.0)
    async with running_simulator(config) as sim, AsyncExitStack() as stack:
        one = await stack.enter_async_context(replica(sim, redis_server.addr))
        two = await stack.enter_async_context(replica(sim, redis_server.addr))
        await one.infer("team-a", "first")  # the limited key first: 429, then the good one
        for i in range(6):
            await (two, one)[i % 2].infer("team-b", f"q {i}")
        by_key = sim.stats.by_key
        assert by_key[key_fingerprint(BAD_KEY)] == 1  # two never tried it: one round trip told it
        assert by_key[key_fingerprint(GOOD_KEY)] == 7


async def test_one_rate_limit_across_both_replicas(redis_server: RedisServer) -> None:  # noqa: F811
    async with running_simulator(SimulatorConfig()) as sim, AsyncExitStack() as stack:
        env = {"TENANT_RATE_LIMIT": "1", "TENANT_RATE_BURST": "2"}
        one = await stack.enter_async_context(replica(sim, redis_server.addr, **env))
        two = await stack.enter_async_context(replica(sim, redis_server.addr, **env))
        loop = asyncio.get_running_loop()
        started = loop.time()
        results = await asyncio.gather(
            *((one, two)[i % 2].infer("team-b", f"burst {i}") for i in range(8)),
            return_exceptions=True,
        )
        took = loop.time() - started
        refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
        assert all(r.code() is grpc.StatusCode.RESOURCE_EXHAUSTED for r in refused)
        assert took < 1.0, "the burst must land within a second for the bound below"
        assert 2 <= len(results) - len(refused) <= 3  # burst 2 + at most 1 refill, not 2 x 2
        # team-a has a bucket of its own
        assert (await two.infer("team-a", "mine")).content


async def test_two_workers_share_one_rate_limit(redis_server: RedisServer) -> None:  # noqa: F811
    async with running_simulator(SimulatorConfig()) as sim:
        env = {"TENANT_RATE_LIMIT": "1", "TENANT_RATE_BURST": "2", "WORKERS": "2"}
        async with replica(sim, redis_server.addr, **env) as proxy:
            channels = [
                grpc.aio.insecure_channel(f"127.0.0.1:{proxy.grpc_port}") for _ in range(8)
            ]  # a connection goes to one worker: eight reach both
            try:
                calls = [
                    pb_grpc.InferenceServiceStub(c).Infer(
                        pb.InferenceRequest(model="gpt-4o", prompt=f"w {i}"),
                        metadata=(("authorization", f"Bearer {TOKENS['team-b']}"),),
                        timeout=20,
                    )
                    for i, c in enumerate(channels)
                ]
                results = await asyncio.gather(*calls, return_exceptions=True)
            finally:
                for channel in channels:
                    await channel.close()
            served = [r for r in results if not isinstance(r, BaseException)]
            assert 2 <= len(served) <= 3


async def test_a_budget_spent_on_one_replica_holds_on_the_other_and_after_restarts(
    disposable_redis: RedisServer,  # noqa: F811 (usage of its own)
) -> None:
    redis = disposable_redis.addr
    env = {"TENANT_BUDGETS": "team-a=20/day"}  # one answer (24 words) spends it
    async with running_simulator(SimulatorConfig(answer_words=24)) as sim:
        async with replica(sim, redis, **env) as one, replica(sim, redis, **env) as two:
            await one.infer("team-a", "spend it")
            usage = await _usage_until_counted(two, "team-a")
            assert usage["budget"] == 20
            assert usage["tokens"] == 2 + 24
            assert usage["window"] == "day"
            assert usage["resets_at"].endswith("T00:00:00Z")
            await _refused(two)
            assert (await two.infer("team-b", "not mine")).content  # unaffected
        upstream_calls = sim.stats.by_key[key_fingerprint(GOOD_KEY)]
        async with replica(sim, redis, **env) as again:  # both restarted
            await _refused(again)
            report = await again.stub.Usage(
                pb.UsageRequest(), metadata=(("authorization", f"Bearer {TOKENS['team-a']}"),)
            )
            assert report.tenant == "team-a"
            assert report.tokens == 2 + 24
            assert report.budget == 20
            assert report.models[0].model == "gpt-4o"
            assert report.models[0].requests == 1
        assert sim.stats.by_key[key_fingerprint(GOOD_KEY)] == upstream_calls  # never upstream


async def _usage_until_counted(proxy: Replica, tenant: str) -> dict[str, object]:
    async with httpx.AsyncClient() as http, asyncio.timeout(10):
        while True:  # the count is written in the background, after the answer
            answer = await http.get(
                f"http://127.0.0.1:{proxy.http_port}/v1/usage",
                headers={"Authorization": f"Bearer {TOKENS[tenant]}"},
            )
            assert answer.status_code == 200, answer.text
            usage: dict[str, object] = answer.json()
            if usage["tokens"]:
                return usage
            await asyncio.sleep(0.05)


async def _refused(proxy: Replica) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await proxy.infer("team-a", "more")
    assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    retry_ms = dict(refused.value.trailing_metadata() or ())["retry-after-ms"]
    assert 0 < int(retry_ms) <= 86_400_000
    async with httpx.AsyncClient() as http:
        answer = await http.post(
            f"http://127.0.0.1:{proxy.http_port}/v1/chat/completions",
            json={"model": "gpt-4o", "messages": [{"role": "user", "content": "more"}]},
            headers={"Authorization": f"Bearer {TOKENS['team-a']}"},
        )
        assert answer.status_code == 429
        assert answer.json()["error"]["code"] == "insufficient_quota"
        assert int(answer.headers["Retry-After"]) > 0
        embedded = await http.post(  # embeddings spend the same budget
            f"http://127.0.0.1:{proxy.http_port}/v1/embeddings",
            json={"model": "text-embedding-3-small", "input": "more"},
            headers={"Authorization": f"Bearer {TOKENS['team-a']}"},
        )
    assert embedded.status_code == 429, embedded.text
    assert embedded.json()["error"]["code"] == "insufficient_quota"


async def test_redis_stopped_and_restarted_under_traffic_loses_no_request(
    disposable_redis: RedisServer,  # noqa: F811
) -> None:
    async with running_simulator(SimulatorConfig()) as sim, AsyncExitStack() as stack:
        env = {
            "TENANT_BUDGETS": "team-a=1000000/day",
            "TENANT_RATE_LIMIT": "1000",
            "STATE_TIMEOUT": "50ms",
        }
        one = await stack.enter_async_context(replica(sim, disposable_redis.addr, **env))
        two = await stack.enter_async_context(replica(sim, disposable_redis.addr, **env))
        stop = asyncio.Event()
        answered: list[str] = []

        async def traffic(proxy: Replica, name: str) -> None:
            for i in range(400):  # bounded
                if stop.is_set():
                    return
                answered.append((await proxy.infer("team-a", f"{name} {i}")).content)
                await asyncio.sleep(0.02)

        load = [asyncio.ensure_future(traffic(p, n)) for p, n in ((one, "one"), (two, "two"))]
        await asyncio.sleep(0.5)
        await asyncio.to_thread(disposable_redis.stop)
        await asyncio.sleep(1.0)
        assert counter(await one.metrics(), "state_backend_up") == 0
        await asyncio.to_thread(disposable_redis.start)
        await asyncio.sleep(2.0)  # each process tries Redis again within a second
        stop.set()
        await asyncio.gather(*load)  # any failed request would raise here
        assert len(answered) > 20
        for proxy in (one, two):
            assert counter(await proxy.metrics(), "state_backend_up") == 1
