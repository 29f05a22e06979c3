"""Issue 10, on real daemons: blank tokens (finding 6), the HTTP port under TLS and mutual TLS
(7), slow clients on the HTTP port (8), the status of a response too large to send (9), and what
/metrics and /health show without the token (12)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from agent_infra.runtime.logs import REPEAT_BURST
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.daemon_support import (
    DaemonProcess,
    eventually,
    fetch_metrics,
    free_port,
    log_records,
    run_to_exit,
    running_daemon,
    sample_value,
)


async def _check(channel: grpc.aio.Channel, token: str | None = None) -> grpc.StatusCode:
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    try:
        await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), metadata=metadata, timeout=10)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def _orchestrator_args(tmp_path: Path, config: Path | None = None) -> list[str]:
    args = ["--data-dir", str(tmp_path / "data")]
    return [*args, "--config", str(config)] if config is not None else args


# ---------------------------------------------------------------------------------------------
# Finding 6: an empty or blank token turns nothing off
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("content", ["", " \n\t\n"], ids=["empty", "blank"])
async def test_blank_token_file_is_a_config_error(tmp_path: Path, content: str) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(content)
    code, output = await run_to_exit(
        "orchestrator", ["--auth-token-file", str(token_file), "--grpc-addr",
                         f"127.0.0.1:{free_port()}", *_orchestrator_args(tmp_path)])
    assert code == 2, output
    assert "auth.token_file" in output and "flag --auth-token-file" in output, output
    assert "empty or blank" in output, output


async def test_blank_token_value_is_a_config_error(tmp_path: Path) -> None:
    code, output = await run_to_exit(
        "orchestrator", ["--grpc-addr", f"127.0.0.1:{free_port()}",
                         *_orchestrator_args(tmp_path)],
        env={"ORCHESTRATOR_AUTH_TOKEN": "   "})
    assert code == 2, output
    assert "auth.token" in output and "env ORCHESTRATOR_AUTH_TOKEN" in output, output


async def test_reload_with_a_blank_token_file_keeps_the_old_token(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    config = tmp_path / "orchestrator.toml"
    config.write_text(f'[auth]\ntoken_file = "{token_file}"\nhealth_open = false\n')
    async with running_daemon("orchestrator", tmp_path,
                              args=_orchestrator_args(tmp_path, config)) as daemon:
        channel = daemon.channel()
        assert await _check(channel, "s3cret") == grpc.StatusCode.OK

        token_file.write_text("  \n")
        daemon.notify.messages.clear()
        daemon.signal(signal.SIGHUP)
        await daemon.notify.wait_for("RELOADING")
        ready = await daemon.notify.wait_for("READY")
        assert "rejected" in ready.get("STATUS", ""), ready
        assert await _check(channel) == grpc.StatusCode.UNAUTHENTICATED
        assert await _check(channel, "s3cret") == grpc.StatusCode.OK
        rejected = [r for r in log_records(daemon.log_text())
                    if r.get("event") == "reload_rejected"]
        assert rejected and "auth.token_file" in rejected[0]["error"], rejected


# ---------------------------------------------------------------------------------------------
# Finding 7: the HTTP port under TLS and mutual TLS
# ---------------------------------------------------------------------------------------------


def _client_tls(pki: dict[str, Path], *, with_cert: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki["ca"]))
    if with_cert:
        context.load_cert_chain(pki["client_cert"], pki["client_key"])
    return context


async def _post(url: str, body: object, tls: ssl.SSLContext | None = None
                ) -> tuple[int, dict[str, Any]]:
    timeout = aiohttp.ClientTimeout(total=20)
    async with aiohttp.ClientSession(timeout=timeout) as session, session.post(
        url, json=body, ssl=tls if tls is not None else False
    ) as response:
        return response.status, await response.json()


async def test_http_port_takes_mutual_tls_like_grpc(tmp_path: Path, pki: dict[str, Path]) -> None:
    args = ["--tls-cert", str(pki["cert"]), "--tls-key", str(pki["key"]),
            "--tls-client-ca", str(pki["ca"]), *_orchestrator_args(tmp_path)]
    task = {"id": "over-https", "class": "cpu_short", "payload": {"command": "true"}}
    async with running_daemon("orchestrator", tmp_path, args=args) as daemon:
        https = f"https://127.0.0.1:{daemon.http_port}/queue/submit"
        with pytest.raises(aiohttp.ClientError):
            await _post(f"{daemon.http_url}/queue/submit", task)
        with pytest.raises((aiohttp.ClientError, ssl.SSLError)):
            await _post(https, task, _client_tls(pki, with_cert=False))
        status, answer = await _post(https, task, _client_tls(pki, with_cert=True))
        # 201: neither refused attempt stored the task.
        assert (status, answer["task_id"], answer["created"]) == (201, "over-https", True), answer


async def test_http_port_takes_tls_like_grpc(tmp_path: Path, pki: dict[str, Path]) -> None:
    args = ["--tls-cert", str(pki["cert"]), "--tls-key", str(pki["key"]),
            *_orchestrator_args(tmp_path)]
    async with running_daemon("orchestrator", tmp_path, args=args) as daemon:
        timeout = aiohttp.ClientTimeout(total=20)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            with pytest.raises(aiohttp.ClientError):
                async with session.get(f"{daemon.http_url}/health"):
                    pass
            async with session.get(f"https://127.0.0.1:{daemon.http_port}/health",
                                   ssl=_client_tls(pki, with_cert=False)) as response:
                assert response.status == 200


async def test_plaintext_submit_on_the_network_is_refused(tmp_path: Path) -> None:
    port = free_port()
    code, output = await run_to_exit(
        "orchestrator", ["--grpc-addr", f"127.0.0.1:{free_port()}",
                         "--http-addr", f"0.0.0.0:{port}", *_orchestrator_args(tmp_path)])
    assert code == 2, output
    assert f"server.http_addr = '0.0.0.0:{port}'" in output, output
    assert "POST /queue/submit" in output and "server.http_allow_plaintext" in output, output


# ---------------------------------------------------------------------------------------------
# Finding 8: slow clients on the HTTP port
# ---------------------------------------------------------------------------------------------

HALF_SENT = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n"


def _open_sockets(pid: int) -> int:
    count = 0
    for name in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:"):
                count += 1
    return count


async def _until_closed(reader: asyncio.StreamReader) -> bool:
    """Reads until the server closes the connection (True), whatever it sent first."""
    try:
        while await reader.read(65536):
            pass
    except ConnectionError:
        pass
    return True


@contextlib.contextmanager
def _closing(writers: list[asyncio.StreamWriter]) -> Iterator[None]:
    try:
        yield
    finally:
        for writer in writers:
            writer.close()


async def test_half_sent_requests_neither_starve_health_nor_grpc(tmp_path: Path) -> None:
    limit, clients = 50, 300
    config = tmp_path / "orchestrator.toml"
    # A header timeout far longer than the test: only the connection limit frees sockets.
    config.write_text(f'[server]\nhttp_max_connections = {limit}\n'
                      'http_header_timeout = "10m"\n')
    async with running_daemon("orchestrator", tmp_path,
                              args=_orchestrator_args(tmp_path, config)) as daemon:
        baseline = _open_sockets(daemon.process.pid)
        readers: list[asyncio.StreamReader] = []
        writers: list[asyncio.StreamWriter] = []
        with _closing(writers):
            for _ in range(clients):
                reader, writer = await asyncio.open_connection("127.0.0.1", daemon.http_port)
                writer.write(HALF_SENT)
                readers.append(reader)
                writers.append(writer)
            closes = [asyncio.ensure_future(_until_closed(reader)) for reader in readers]

            async def evicted() -> bool:
                return sum(close.done() for close in closes) >= clients - limit

            await eventually(evicted, f"{clients - limit} half-sent connections closed")
            assert _open_sockets(daemon.process.pid) <= baseline + limit + 10

            began = time.monotonic()
            assert (await _get(daemon, "/health"))[0] == 200
            assert await _check(daemon.channel()) == grpc.StatusCode.OK
            assert time.monotonic() - began < 10
            for close in closes:
                close.cancel()
        limit_lines = [r for r in log_records(daemon.log_text())
                       if r.get("event") == "http_connection_limit"]
        assert 1 <= len(limit_lines) <= REPEAT_BURST + 2, len(limit_lines)
    suppressed = [r for r in log_records(daemon.log_text())
                  if r.get("event") == "similar_lines_suppressed"
                  and r.get("similar_event") == "http_connection_limit"]
    assert suppressed and sum(r["count"] for r in suppressed) >= clients - limit - len(
        limit_lines) - REPEAT_BURST, suppressed


async def test_header_idle_and_request_timeouts_close_slow_clients(tmp_path: Path) -> None:
    config = tmp_path / "orchestrator.toml"
    config.write_text('[server]\nhttp_header_timeout = "1s"\nhttp_idle_timeout = "1s"\n'
                      'http_request_timeout = "1s"\n')
    async with running_daemon("orchestrator", tmp_path,
                              args=_orchestrator_args(tmp_path, config)) as daemon:
        writers: list[asyncio.StreamWriter] = []
        with _closing(writers):
            async def connect() -> asyncio.StreamReader:
                reader, writer = await asyncio.open_connection("127.0.0.1", daemon.http_port)
                writers.append(writer)
                return reader

            # Headers never finished, sent at once or one byte at a time.
            half_sent = [await connect() for _ in range(20)]
            for writer in writers:
                writer.write(HALF_SENT)
            trickled = await connect()
            trickler = writers[-1]

            async def trickle() -> None:
                with contextlib.suppress(ConnectionError):
                    for byte in HALF_SENT * 100:
                        trickler.write(bytes([byte]))
                        await trickler.drain()
                        await asyncio.sleep(0.1)

            trickling = asyncio.ensure_future(trickle())
            # A kept-alive connection left idle after its request.
            idle = await connect()
            writers[-1].write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            # A body announced and never finished.
            body = await connect()
            writers[-1].write(b"POST /queue/submit HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                              b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
            try:
                async with asyncio.timeout(30):
                    await asyncio.gather(*(_until_closed(r) for r in [*half_sent, trickled]))
                    assert not trickling.done() or trickling.exception() is None
                    answer = await body.readline()
                    assert answer.startswith(b"HTTP/1.1 504"), answer
                    first = await idle.readline()
                    assert first.startswith(b"HTTP/1.1 200"), first
                    await _until_closed(idle)
            finally:
                trickling.cancel()
        # The daemon serves on.
        assert (await _get(daemon, "/health"))[0] == 200


# ---------------------------------------------------------------------------------------------
# Finding 9: the status a client got for a response too large to send
# ---------------------------------------------------------------------------------------------


async def test_response_over_the_limit_is_counted_and_logged_as_resource_exhausted(
        tmp_path: Path) -> None:
    async with running_daemon("slow", tmp_path, args=["--max-message-bytes", "65536"]) as daemon:
        channel = daemon.channel()
        big = channel.unary_unary("/agent_infra.test.Slow/Big")
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await big(b"100000", timeout=10)
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "server.max_message_bytes" in (error.value.details() or "")
        assert await big(b"1000", timeout=10) == b"x" * 1000

        stream = channel.unary_stream("/agent_infra.test.Slow/BigStream")
        received: list[bytes] = []
        with pytest.raises(grpc.aio.AioRpcError) as error:
            async for message in stream(b"100000", timeout=10):
                received.append(message)
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert received == [b"ok"]

        async def counted() -> bool:
            # A stream's status leaves (abort) before the server's middleware counts it.
            handled = (await fetch_metrics(daemon))["grpc_server_handled"]
            return sample_value(handled, "grpc_server_handled_total", grpc_method="BigStream",
                                grpc_code="ResourceExhausted") == 1

        await eventually(counted, "BigStream counted as ResourceExhausted")
        handled = (await fetch_metrics(daemon))["grpc_server_handled"]
        assert sample_value(handled, "grpc_server_handled_total", grpc_method="Big",
                            grpc_code="ResourceExhausted") == 1
        assert sample_value(handled, "grpc_server_handled_total", grpc_method="Big",
                            grpc_code="OK") == 1
        assert sample_value(handled, "grpc_server_handled_total", grpc_method="BigStream",
                            grpc_code="OK") == 0
        logged = [(r["method"].rpartition("/")[2], r["code"])
                  for r in log_records(daemon.log_text()) if r.get("event") == "rpc"
                  and r.get("method", "").startswith("/agent_infra.test.Slow/Big")]
        assert logged == [("Big", "RESOURCE_EXHAUSTED"), ("Big", "OK"),
                          ("BigStream", "RESOURCE_EXHAUSTED")], logged


# ---------------------------------------------------------------------------------------------
# Finding 12: /metrics and the detail of /health in token mode
# ---------------------------------------------------------------------------------------------


async def _get(daemon: DaemonProcess, path: str, token: str | None = None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session, \
            session.get(f"{daemon.http_url}{path}", headers=headers) as response:
        return response.status, await response.text()


async def test_token_mode_closes_metrics_and_health_detail_by_default(tmp_path: Path) -> None:
    env = {"ORCHESTRATOR_AUTH_TOKEN": "s3cret"}
    async with running_daemon("orchestrator", tmp_path, args=_orchestrator_args(tmp_path),
                              env=env) as daemon:
        assert (await _get(daemon, "/metrics"))[0] == 401
        assert (await _get(daemon, "/metrics", "wrong"))[0] == 401
        status, text = await _get(daemon, "/metrics", "s3cret")
        assert status == 200 and "grpc_server_started_total" in text

        status, text = await _get(daemon, "/health")
        assert (status, text) == (200, '{"status": "ok"}')  # the original's probe value
        status, text = await _get(daemon, "/health", "s3cret")
        assert status == 200 and '"version"' in text and '"dependencies"' in text


async def test_token_mode_with_metrics_open_and_health_closed(tmp_path: Path) -> None:
    config = tmp_path / "orchestrator.toml"
    config.write_text('[auth]\ntoken = "s3cret"\nmetrics_open = true\nhealth_open = false\n')
    async with running_daemon("orchestrator", tmp_path,
                              args=_orchestrator_args(tmp_path, config)) as daemon:
        status, text = await _get(daemon, "/metrics")
        assert status == 200 and "grpc_server_started_total" in text
        assert (await _get(daemon, "/health"))[0] == 401
        assert await _check(daemon.channel()) == grpc.StatusCode.UNAUTHENTICATED
        status, text = await _get(daemon, "/health", "s3cret")
        assert status == 200 and '"version"' in text


async def test_without_a_token_metrics_and_health_are_open(tmp_path: Path) -> None:
    async with running_daemon("orchestrator", tmp_path,
                              args=_orchestrator_args(tmp_path)) as daemon:
        assert (await _get(daemon, "/metrics"))[0] == 200
        status, text = await _get(daemon, "/health")
        assert status == 200 and '"version"' in text
