"""Graceful shutdown, forced exit and SIGHUP, on a real daemon process with real signals."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.daemon_support import (
    DaemonProcess,
    eventually,
    fetch_metrics,
    log_records,
    running_daemon,
    sample_value,
    start_daemon,
)

SLEEP = "/agent_infra.test.Slow/Sleep"
TICKS = "/agent_infra.test.Slow/Ticks"
FLOOD = "/agent_infra.test.Slow/Flood"


async def _in_flight(daemon: DaemonProcess, method: str) -> None:
    async def started() -> bool:
        samples = (await fetch_metrics(daemon)).get("grpc_server_started", [])
        return sample_value(samples, "grpc_server_started_total", grpc_method=method) >= 1

    await eventually(started, f"{method} to be in flight")


async def test_sigterm_lets_in_flight_rpc_finish_and_refuses_new_calls(tmp_path: Path) -> None:
    daemon = await start_daemon("slow", tmp_path, args=["--shutdown-grace", "30"])
    channel = daemon.channel()
    try:
        slow = asyncio.ensure_future(channel.unary_unary(SLEEP)(b"2", timeout=60))
        await _in_flight(daemon, "Sleep")
        began = time.monotonic()
        daemon.signal(signal.SIGTERM)
        await daemon.notify.wait_for("STOPPING")

        async with grpc.aio.insecure_channel(daemon.grpc_addr) as late:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await health_pb2_grpc.HealthStub(late).Check(
                    health_pb2.HealthCheckRequest(), timeout=10
                )
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

        assert await slow == b"2", "the in-flight RPC must complete normally"
        assert await daemon.wait_exit(30) == 0
        assert time.monotonic() - began < 30
    finally:
        await channel.close()
        await daemon.stop()
        daemon.notify.close()


async def test_grace_bounds_shutdown_when_rpc_is_slower(tmp_path: Path) -> None:
    daemon = await start_daemon("slow", tmp_path, args=["--shutdown-grace", "1"])
    channel = daemon.channel()
    try:
        slow = asyncio.ensure_future(channel.unary_unary(SLEEP)(b"120", timeout=180))
        await _in_flight(daemon, "Sleep")
        began = time.monotonic()
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait_exit(30) == 0
        assert time.monotonic() - began < 15, "shutdown must not wait for the slow RPC"
        with pytest.raises(grpc.aio.AioRpcError):
            await slow
    finally:
        await channel.close()
        await daemon.stop()
        daemon.notify.close()


async def test_long_lived_streams_end_at_shutdown(tmp_path: Path) -> None:
    daemon = await start_daemon("slow", tmp_path, args=["--shutdown-grace", "60"])
    channel = daemon.channel()
    try:
        ticks = channel.unary_stream(TICKS)(b"", timeout=120)
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(), timeout=120
        )
        first = await watch.read()
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        assert await ticks.read() == b"tick"

        began = time.monotonic()
        daemon.signal(signal.SIGTERM)
        statuses = []
        async with asyncio.timeout(30):
            while await ticks.read() is not grpc.aio.EOF:
                pass
            while (response := await watch.read()) is not grpc.aio.EOF:
                statuses.append(response.status)
        assert await ticks.code() == grpc.StatusCode.OK
        assert await watch.code() == grpc.StatusCode.OK
        assert health_pb2.HealthCheckResponse.SERVING not in statuses
        assert await daemon.wait_exit(30) == 0
        # Well inside the 60 s grace: open streams do not hold the process.
        assert time.monotonic() - began < 20
    finally:
        await channel.close()
        await daemon.stop()
        daemon.notify.close()


async def test_a_stream_its_client_is_not_reading_ends_cleanly_at_shutdown(tmp_path: Path) -> None:
    # Whole messages, then a clean end; tests/unit/test_stream_closer.py holds the exact case of
    # a write in flight that the shutdown's cancel must not interrupt.
    daemon = await start_daemon("slow", tmp_path, args=["--shutdown-grace", "60"])
    channel = daemon.channel()
    try:
        size = 1_000_000
        flood = channel.unary_stream(FLOOD)(str(size).encode(), timeout=120)
        assert len(await flood.read()) == size
        began = time.monotonic()
        daemon.signal(signal.SIGTERM)
        await daemon.notify.wait_for("STOPPING")
        async with asyncio.timeout(30):
            while (message := await flood.read()) is not grpc.aio.EOF:
                assert len(message) == size, "a message cut short"
        assert await flood.code() == grpc.StatusCode.OK
        assert await daemon.wait_exit(30) == 0
        assert time.monotonic() - began < 20
        assert "TOO_MANY_OPERATIONS" not in daemon.log_text()
    finally:
        await channel.close()
        await daemon.stop()
        daemon.notify.close()


async def test_second_signal_forces_exit(tmp_path: Path) -> None:
    daemon = await start_daemon("slow", tmp_path, args=["--shutdown-grace", "120"])
    channel = daemon.channel()
    try:
        slow = asyncio.ensure_future(channel.unary_unary(SLEEP)(b"300", timeout=400))
        await _in_flight(daemon, "Sleep")
        daemon.signal(signal.SIGTERM)
        await daemon.notify.wait_for("STOPPING")
        daemon.signal(signal.SIGINT)
        assert await daemon.wait_exit(15) == 1
        with pytest.raises(grpc.aio.AioRpcError):
            await slow
    finally:
        await channel.close()
        await daemon.stop()
        daemon.notify.close()
    # os._exit skips every clean-up: the line saying why must be written before it
    last = log_records(daemon.log_text())[-1]
    assert last["event"] == "forced_exit" and last["signal"] == "SIGINT", last


async def _check(channel: grpc.aio.Channel, token: str | None) -> grpc.StatusCode:
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    try:
        await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), metadata=metadata, timeout=10
        )
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def test_sighup_reloads_config_and_keeps_the_old_one_when_bad(tmp_path: Path) -> None:
    config = tmp_path / "env-manager.toml"
    config.write_text('[auth]\ntoken = "first"\nhealth_open = false\n')
    async with running_daemon("env-manager", tmp_path, args=["--config", str(config)]) as daemon:
        channel = daemon.channel()
        assert await _check(channel, "first") == grpc.StatusCode.OK

        config.write_text('[auth]\ntoken = "second"\nhealth_open = false\n')
        daemon.notify.messages.clear()
        daemon.signal(signal.SIGHUP)
        await daemon.notify.wait_for("RELOADING")
        await daemon.notify.wait_for("READY")
        assert await _check(channel, "second") == grpc.StatusCode.OK
        assert await _check(channel, "first") == grpc.StatusCode.UNAUTHENTICATED

        config.write_text("[auth\nbroken")
        daemon.notify.messages.clear()
        daemon.signal(signal.SIGHUP)
        await daemon.notify.wait_for("READY")
        assert daemon.process.returncode is None, "SIGHUP must never kill the daemon"
        assert await _check(channel, "second") == grpc.StatusCode.OK
        assert "reload_rejected" in daemon.log_text()
