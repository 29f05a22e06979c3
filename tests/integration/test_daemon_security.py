"""TLS, mutual TLS and bearer tokens on a real daemon."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.daemon_support import running_daemon


async def _check(channel: grpc.aio.Channel, token: str | None = None) -> grpc.StatusCode:
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    try:
        await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), metadata=metadata, timeout=10)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def test_tls(tmp_path: Path, pki: dict[str, Path]) -> None:
    args = ["--tls-cert", str(pki["cert"]), "--tls-key", str(pki["key"])]
    async with running_daemon("env-manager", tmp_path, args=args) as daemon:
        async with grpc.aio.insecure_channel(daemon.grpc_addr) as plain:
            assert await _check(plain) == grpc.StatusCode.UNAVAILABLE
        trusted = grpc.ssl_channel_credentials(root_certificates=pki["ca"].read_bytes())
        async with grpc.aio.secure_channel(daemon.grpc_addr, trusted) as secure:
            assert await _check(secure) == grpc.StatusCode.OK
        untrusted = grpc.ssl_channel_credentials(root_certificates=trustme.CA().cert_pem.bytes())
        async with grpc.aio.secure_channel(daemon.grpc_addr, untrusted) as wrong_ca:
            assert await _check(wrong_ca) == grpc.StatusCode.UNAVAILABLE


async def test_mutual_tls(tmp_path: Path, pki: dict[str, Path]) -> None:
    args = ["--tls-cert", str(pki["cert"]), "--tls-key", str(pki["key"]),
            "--tls-client-ca", str(pki["ca"])]
    async with running_daemon("orchestrator", tmp_path, args=args) as daemon:
        no_client_cert = grpc.ssl_channel_credentials(root_certificates=pki["ca"].read_bytes())
        async with grpc.aio.secure_channel(daemon.grpc_addr, no_client_cert) as anonymous:
            assert await _check(anonymous) == grpc.StatusCode.UNAVAILABLE
        with_cert = grpc.ssl_channel_credentials(
            root_certificates=pki["ca"].read_bytes(),
            private_key=pki["client_key"].read_bytes(),
            certificate_chain=pki["client_cert"].read_bytes(),
        )
        async with grpc.aio.secure_channel(daemon.grpc_addr, with_cert) as identified:
            assert await _check(identified) == grpc.StatusCode.OK


async def test_bearer_token(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    config = tmp_path / "env-manager.toml"
    config.write_text(f'[auth]\ntoken_file = "{token_file}"\nhealth_open = false\n')
    async with running_daemon("env-manager", tmp_path, args=["--config", str(config)]) as daemon:
        channel = daemon.channel()
        assert await _check(channel) == grpc.StatusCode.UNAUTHENTICATED
        assert await _check(channel, "wrong") == grpc.StatusCode.UNAUTHENTICATED
        assert await _check(channel, "s3cret") == grpc.StatusCode.OK


async def test_health_left_open_while_rest_needs_token(tmp_path: Path) -> None:
    env = {"ORCHESTRATOR_AUTH_TOKEN": "s3cret"}
    async with running_daemon("orchestrator", tmp_path, env=env) as daemon:
        channel = daemon.channel()
        assert await _check(channel) == grpc.StatusCode.OK
        reflection = channel.stream_stream(
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
        call = reflection(iter(()), timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            async for _ in call:
                pass
        assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
