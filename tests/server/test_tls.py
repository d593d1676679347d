"""TLS and mutual TLS on the gRPC port, the webhook receiver and the metrics endpoint."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest
from server_harness import SENDER, T0, make_config, run_async
from tls_certs import Certs, make_certs

from tiergate import config as cfg
from tiergate.cli import main
from tiergate.client import TiergateClient
from tiergate.server import Sidecar, StartupError
from tiergate.v1 import admission_pb2 as pb

LOOPBACK = cfg.Endpoint("127.0.0.1", 0)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("tls"))


@asynccontextmanager
async def sidecar(certs: Certs, *, mutual: bool = False) -> AsyncIterator[Sidecar]:
    config = make_config(
        tls_cert=certs.server_cert,
        tls_key=certs.server_key,
        tls_client_ca=certs.ca if mutual else None,
        webhook_listen=LOOPBACK,
        metrics_listen=LOOPBACK,
        webhook_verify_token="verify-me",
    )
    s = Sidecar(config)
    await s.start()
    try:
        yield s
    finally:
        await s.stop(0.5)


async def admit(client: TiergateClient) -> pb.AdmitResponse:
    return await client.admit(
        SENDER, "15550000001", category=pb.UTILITY, template_id="t1", at_unix_ms=T0, timeout=10
    )


def client_context(
    certs: Certs, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=certs.ca)
    if cert is not None:
        context.load_cert_chain(cert, key)
    return context


async def http_get(port: int, target: str, context: ssl.SSLContext | None) -> bytes:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname="127.0.0.1" if context else None
    )
    try:
        writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


@run_async
async def test_grpc_over_tls(certs: Certs) -> None:
    async with sidecar(certs) as s:
        target = f"127.0.0.1:{s.port}"
        async with TiergateClient(target, ca_file=certs.ca) as client:
            assert (await admit(client)).decision == pb.DECISION_ADMIT
        async with TiergateClient(target) as plain:  # plaintext to a TLS port
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await admit(plain)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE


@run_async
async def test_grpc_mutual_tls_needs_a_client_certificate_from_the_ca(certs: Certs) -> None:
    async with sidecar(certs, mutual=True) as s:
        target = f"127.0.0.1:{s.port}"
        async with TiergateClient(
            target, ca_file=certs.ca, cert_file=certs.client_cert, key_file=certs.client_key
        ) as client:
            assert (await admit(client)).decision == pb.DECISION_ADMIT
        for cert, key in ((None, None), (certs.stranger_cert, certs.stranger_key)):
            async with TiergateClient(
                target, ca_file=certs.ca, cert_file=cert, key_file=key
            ) as client:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await admit(client)
                assert info.value.code() == grpc.StatusCode.UNAVAILABLE


@run_async
async def test_http_listeners_over_tls(certs: Certs) -> None:
    async with sidecar(certs) as s:
        context = client_context(certs)
        answer = await http_get(
            s.webhook_port,
            "/webhook?hub.mode=subscribe&hub.verify_token=verify-me&hub.challenge=42",
            context,
        )
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"\r\n\r\n42")
        metrics = await http_get(s.metrics_port, "/metrics", context)
        assert metrics.startswith(b"HTTP/1.1 200") and b"tiergate_senders" in metrics
        # Plain HTTP to a TLS listener gets no HTTP answer.
        plain = await http_get(s.webhook_port, "/webhook", None)
        assert not plain.startswith(b"HTTP/1.1")


@run_async
async def test_http_mutual_tls(certs: Certs) -> None:
    async with sidecar(certs, mutual=True) as s:
        good = client_context(certs, certs.client_cert, certs.client_key)
        assert (await http_get(s.metrics_port, "/metrics", good)).startswith(b"HTTP/1.1 200")
        for context in (
            client_context(certs),
            client_context(certs, certs.stranger_cert, certs.stranger_key),
        ):
            with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
                answer = await http_get(s.webhook_port, "/webhook", context)
                if not answer:  # TLS 1.3: the refusal arrives as the stream's end
                    raise ConnectionResetError
                pytest.fail(f"served without a client certificate: {answer!r}")


@run_async
async def test_unusable_certificate_files_are_startup_errors(certs: Certs, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    cases = [
        (dict(tls_cert=garbage, tls_key=certs.server_key), "tls_cert"),
        (dict(tls_cert=certs.server_cert, tls_key=tmp_path / "missing.key"), "tls_key"),
        (dict(tls_cert=certs.server_cert, tls_key=certs.client_key), "tls_cert"),
        (
            dict(tls_cert=certs.server_cert, tls_key=certs.server_key, tls_client_ca=garbage),
            "tls_client_ca",
        ),
    ]
    for overrides, key in cases:
        s = Sidecar(make_config(**overrides))
        with pytest.raises(StartupError, match=f"^{key}: "):
            await s.start()
        await s.stop(0)


def test_tls_flags_and_their_checks(certs: Certs, capsys: pytest.CaptureFixture[str]) -> None:
    loaded = cfg.load(
        {
            "tls_cert": str(certs.server_cert),
            "tls_key": str(certs.server_key),
            "tls_client_ca": str(certs.ca),
        },
        env={},
    )
    assert (loaded.tls_cert, loaded.tls_key, loaded.tls_client_ca) == (
        certs.server_cert,
        certs.server_key,
        certs.ca,
    )
    env = {"TIERGATE_TLS_CERT": str(certs.server_cert), "TIERGATE_TLS_KEY": str(certs.server_key)}
    assert cfg.load({}, env=env).tls_key == certs.server_key
    with pytest.raises(cfg.ConfigError, match="together") as info:
        cfg.load({"tls_cert": str(certs.server_cert)}, env={})
    assert info.value.key == "tls_key"
    with pytest.raises(cfg.ConfigError) as info:
        cfg.load({"tls_client_ca": str(certs.ca)}, env={})
    assert info.value.key == "tls_client_ca"
    assert main(["check-config", "--data-dir", "none", "--tls-cert", str(certs.server_cert)]) == 2
    assert "tls_key" in capsys.readouterr().err


def test_state_command_over_mutual_tls(certs: Certs, capsys: pytest.CaptureFixture[str]) -> None:
    @run_async
    async def run() -> None:
        async with sidecar(certs, mutual=True) as s:
            args = ["state", SENDER, "--target", f"127.0.0.1:{s.port}", "--at-unix-ms", str(T0)]
            args += ["--tls-ca", str(certs.ca)]
            mine = ["--tls-cert", str(certs.client_cert), "--tls-key", str(certs.client_key)]
            assert await asyncio.to_thread(main, [*args, *mine]) == 0
            assert await asyncio.to_thread(main, [*args, "--timeout", "3"]) == 1

    run()
    assert SENDER in capsys.readouterr().out
