"""The gRPC edge: credentials, tenants, limits, bounded input, TLS and mTLS over real gRPC."""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from adapters.inbound.grpc.generated import proxy_pb2 as pb
from adapters.inbound.grpc.generated import proxy_pb2_grpc as pb_grpc
from tests.harness import scrape_port
from tests.integration.conftest import running_proxy
from tests.integration.test_grpc_api import ask, status_of

pytestmark = pytest.mark.integration

ALPHA = (("authorization", "Bearer tok-alpha-1"),)


def retry_after_ms(error: grpc.aio.AioRpcError) -> int:
    trailers = dict(error.trailing_metadata() or ())
    return int(trailers["retry-after-ms"])


async def test_the_tenant_is_the_token_however_the_header_is_spelt() -> None:
    async with running_proxy(auth_tokens="tok-alpha-1,tok-beta-22") as proxy:
        for spelling in ("Bearer tok-alpha-1", "bearer  tok-alpha-1", "BEARER tok-alpha-1 "):
            await proxy.stub.Infer(ask(), metadata=(("authorization", spelling),))
        await proxy.stub.Infer(ask(), metadata=(("authorization", "Bearer tok-beta-22"),))
        tenants = [call.request.tenant for call in proxy.openai.calls]
    assert len(set(tenants[:3])) == 1
    assert tenants[3] != tenants[0]
    assert all(t.startswith("tenant-") and "tok-" not in t for t in tenants)


async def test_without_tokens_every_caller_is_the_one_anonymous_tenant() -> None:
    async with running_proxy() as proxy:
        await proxy.stub.Infer(ask(), metadata=(("authorization", "Bearer made-up-1"),))
        await proxy.stub.Infer(ask(), metadata=(("authorization", "Bearer made-up-2"),))
        assert {call.request.tenant for call in proxy.openai.calls} == {""}


async def test_failed_auth_is_logged_by_fingerprint_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    async with running_proxy(auth_tokens="tok-alpha-1") as proxy:
        missing = await status_of(proxy.stub.Infer(ask()))
        wrong = (("authorization", "Bearer tok-wrong-guess"),)
        invalid = await status_of(proxy.stub.Infer(ask(), metadata=wrong))
        malformed = await status_of(
            proxy.stub.Infer(ask(), metadata=(("authorization", "Basic abc"),))
        )
        samples = await scrape_port(proxy.metrics_port)
    assert {e.code() for e in (missing, invalid, malformed)} == {grpc.StatusCode.UNAUTHENTICATED}
    for reason in ("missing", "invalid", "malformed"):
        assert samples[("auth_failures_total", (("reason", reason),))] == 1
    assert samples[("requests_total", (("status", "unauthenticated"),))] == 3
    assert "tok-wrong-guess" not in caplog.text
    refused = [r for r in caplog.records if r.name == "llm_proxy.auth"]
    assert len(refused) == 1, caplog.text  # at most a line a second; the counter has them all
    assert "/inferenceproxy.InferenceService/Infer" in refused[0].getMessage()
    assert "missing" in refused[0].getMessage()


async def test_a_tenant_over_its_rate_gets_resource_exhausted_with_retry_after() -> None:
    async with running_proxy(
        auth_tokens="tok-alpha-1,tok-beta-22", tenant_rate_limit="0.5", tenant_rate_burst="2"
    ) as proxy:
        for _ in range(2):
            await proxy.stub.Infer(ask(), metadata=ALPHA)
        error = await status_of(proxy.stub.Infer(ask(), metadata=ALPHA))
        other = await proxy.stub.Infer(
            ask(), metadata=(("authorization", "Bearer tok-beta-22"),)
        )  # another tenant is not affected
        samples = await scrape_port(proxy.metrics_port)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "TENANT_RATE_LIMIT" in (error.details() or "")
    assert 1000 <= retry_after_ms(error) <= 2000
    assert other.content
    assert samples[("requests_total", (("status", "resource_exhausted"),))] == 1


async def test_over_max_concurrent_requests_is_resource_exhausted_with_retry_after() -> None:
    async with running_proxy(max_concurrent_requests="2") as proxy:
        proxy.openai.gate = asyncio.Event()
        held = [asyncio.ensure_future(proxy.stub.Infer(ask(f"held {i}"))) for i in range(2)]
        async with asyncio.timeout(10):
            while len(proxy.openai.calls) < 2:  # both held calls reached the provider
                proxy.openai.entered.clear()
                await proxy.openai.entered.wait()
        unary = await status_of(proxy.stub.Infer(ask("one too many")))
        stream = await status_of(_drain(proxy.stub.InferStream(ask("and a stream"))))
        proxy.openai.gate.set()
        assert all(r.content for r in await asyncio.gather(*held))
        after = await proxy.stub.Infer(ask("a slot is free again"))
    for error in (unary, stream):
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "MAX_CONCURRENT_REQUESTS" in (error.details() or "")
        assert retry_after_ms(error) > 0
        pushback = dict(error.trailing_metadata() or ()).get("grpc-retry-pushback-ms")
        assert pushback == str(retry_after_ms(error))  # what gRPC's retry policy obeys
    assert after.content


async def test_grpcs_own_retry_policy_waits_for_the_pushback_and_then_gets_in() -> None:
    # RESOURCE_EXHAUSTED retried by the channel itself: without grpc-retry-pushback-ms it
    # retries after its 10 ms backoff, still refused; with it, after the slot has freed up
    retry = {
        "methodConfig": [{
            "name": [{"service": "inferenceproxy.InferenceService"}],
            "retryPolicy": {
                "maxAttempts": 2, "initialBackoff": "0.01s", "maxBackoff": "0.01s",
                "backoffMultiplier": 1, "retryableStatusCodes": ["RESOURCE_EXHAUSTED"],
            },
        }]
    }  # fmt: skip
    async with running_proxy(max_concurrent_requests="1") as proxy:
        proxy.openai.gate = asyncio.Event()
        held = asyncio.ensure_future(proxy.stub.Infer(ask("held")))
        async with asyncio.timeout(10):
            while not proxy.openai.calls:
                proxy.openai.entered.clear()
                await proxy.openai.entered.wait()
        asyncio.get_running_loop().call_later(0.3, proxy.openai.gate.set)  # frees the slot
        options = [("grpc.enable_retries", 1), ("grpc.service_config", json.dumps(retry))]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{proxy.port}", options=options) as c:
            answer = await pb_grpc.InferenceServiceStub(c).Infer(ask("retried"), timeout=10)
        await held
    assert answer.content


async def _drain(call: object) -> None:
    async for _ in call:  # type: ignore[attr-defined]
        pass


async def test_a_huge_model_name_is_invalid_argument_and_not_echoed_whole(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    async with running_proxy() as proxy:
        error = await status_of(proxy.stub.Infer(ask(model="g" * 3_000_000)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "MAX_MODEL_NAME_LENGTH" in (error.details() or "")
    assert len(error.details() or "") < 300
    assert max(len(r.getMessage()) for r in caplog.records) < 1000


async def test_too_many_messages_are_refused_before_any_work() -> None:
    messages = [pb.Message(role=pb.ROLE_USER, content="x")] * 1001
    async with running_proxy() as proxy:
        error = await status_of(
            proxy.stub.Infer(pb.InferenceRequest(model="gpt-4", messages=messages))
        )
        ok = await proxy.stub.Infer(pb.InferenceRequest(model="gpt-4", messages=messages[:1000]))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "1001 messages" in (error.details() or "")
    assert "MAX_MESSAGES" in (error.details() or "")
    assert ok.content


# -- TLS ------------------------------------------------------------------------------------


@dataclass
class Pki:
    ca: Path
    cert: Path
    key: Path
    client_cert: bytes
    client_key: bytes
    stranger_cert: bytes  # signed by a CA the proxy does not trust
    stranger_key: bytes


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


async def test_http_and_grpc_share_max_concurrent_requests() -> None:
    async with running_proxy(max_concurrent_requests="1", http=True) as proxy:
        proxy.openai.gate = asyncio.Event()
        held = asyncio.ensure_future(proxy.stub.Infer(ask("held over gRPC")))
        async with asyncio.timeout(10):
            await proxy.openai.entered.wait()
        async with httpx.AsyncClient() as http:
            refused = await http.post(
                f"http://127.0.0.1:{proxy.http_port}/v1/chat/completions",
                json={"model": "gpt-4o", "messages": [{"role": "user", "content": "and me"}]},
            )
        proxy.openai.gate.set()
        assert (await held).content
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "1"
    assert "MAX_CONCURRENT_REQUESTS" in refused.json()["error"]["message"]


def _cert(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[str, ec.EllipticCurvePrivateKey] | None = None,
    ca: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, issuer_key = issuer or (name, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca_key, server_key, client_key = _key(), _key(), _key()
    ca = _cert("test-ca", ca_key, ca=True)
    other_ca_key, stranger_key = _key(), _key()
    (directory / "ca.pem").write_bytes(_pem(ca))
    (directory / "server.pem").write_bytes(
        _pem(_cert("localhost", server_key, ("test-ca", ca_key)))
    )
    (directory / "server.key").write_bytes(_pem_key(server_key))
    return Pki(
        ca=directory / "ca.pem",
        cert=directory / "server.pem",
        key=directory / "server.key",
        client_cert=_pem(_cert("client", client_key, ("test-ca", ca_key))),
        client_key=_pem_key(client_key),
        stranger_cert=_pem(_cert("stranger", stranger_key, ("other-ca", other_ca_key))),
        stranger_key=_pem_key(stranger_key),
    )


def _secure_stub(
    port: int, pki: Pki, cert: bytes | None = None, key: bytes | None = None
) -> tuple[grpc.aio.Channel, pb_grpc.InferenceServiceStub]:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.read_bytes(), private_key=key, certificate_chain=cert
    )
    channel = grpc.aio.secure_channel(
        f"127.0.0.1:{port}", credentials, options=[("grpc.ssl_target_name_override", "localhost")]
    )
    return channel, pb_grpc.InferenceServiceStub(channel)


async def test_tls_serves_encrypted_and_refuses_plaintext(pki: Pki) -> None:
    async with running_proxy(tls_cert_file=str(pki.cert), tls_key_file=str(pki.key)) as proxy:
        channel, stub = _secure_stub(proxy.port, pki)
        async with channel:
            assert (await stub.Infer(ask("over TLS"))).content == "echo: over TLS"
        plaintext = await status_of(proxy.stub.Infer(ask(), timeout=5))
    assert plaintext.code() == grpc.StatusCode.UNAVAILABLE


async def test_mtls_requires_a_client_certificate_from_the_configured_ca(pki: Pki) -> None:
    async with running_proxy(
        tls_cert_file=str(pki.cert), tls_key_file=str(pki.key), tls_client_ca_file=str(pki.ca)
    ) as proxy:
        channel, stub = _secure_stub(proxy.port, pki, pki.client_cert, pki.client_key)
        async with channel:
            assert (await stub.Infer(ask("with a cert"))).content == "echo: with a cert"
        for cert, key in ((None, None), (pki.stranger_cert, pki.stranger_key)):
            channel, stub = _secure_stub(proxy.port, pki, cert, key)
            async with channel:
                error = await status_of(stub.Infer(ask(), timeout=5))
            assert error.code() == grpc.StatusCode.UNAVAILABLE


def _https(pki: Pki, cert: bytes | None, key: bytes | None, tmp: Path) -> httpx.AsyncClient:
    context = ssl.create_default_context(cafile=str(pki.ca))
    if cert is not None and key is not None:
        (tmp / "client.pem").write_bytes(cert)
        (tmp / "client.key").write_bytes(key)
        context.load_cert_chain(tmp / "client.pem", tmp / "client.key")
    return httpx.AsyncClient(verify=context)


async def test_the_http_port_has_the_same_mtls(pki: Pki, tmp_path: Path) -> None:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "over https"}]}
    async with running_proxy(
        tls_cert_file=str(pki.cert), tls_key_file=str(pki.key), tls_client_ca_file=str(pki.ca),
        http=True,
    ) as proxy:  # fmt: skip
        url = f"https://localhost:{proxy.http_port}/v1/chat/completions"
        async with _https(pki, pki.client_cert, pki.client_key, tmp_path) as client:
            answer = await client.post(url, json=body)
        for cert, key in ((None, None), (pki.stranger_cert, pki.stranger_key)):
            async with _https(pki, cert, key, tmp_path) as client:
                with pytest.raises(
                    (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)
                ):
                    await client.post(url, json=body)
        async with httpx.AsyncClient() as plain:
            with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
                await plain.post(url.replace("https", "http"), json=body)
    assert answer.json()["choices"][0]["message"]["content"] == "echo: over https"


def test_unreadable_or_mismatched_tls_files_name_the_variable(pki: Pki, tmp_path: Path) -> None:
    from adapters.process.config_error import ConfigError
    from adapters.process.settings import load_settings

    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    cases = {
        "TLS_CERT_FILE": {
            "tls_cert_file": str(tmp_path / "missing.pem"),
            "tls_key_file": str(pki.key),
        },
        "TLS_KEY_FILE": {"tls_cert_file": str(pki.ca), "tls_key_file": str(pki.key)},
        "TLS_CLIENT_CA_FILE": {
            "tls_cert_file": str(pki.cert),
            "tls_key_file": str(pki.key),
            "tls_client_ca_file": str(garbage),
        },
    }
    for variable, settings in cases.items():
        with pytest.raises(ConfigError, match=variable):
            load_settings(grpc_host="127.0.0.1", **settings)
    with pytest.raises(ConfigError, match="set both or neither"):
        load_settings(tls_cert_file=str(pki.cert))
