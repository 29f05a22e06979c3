"""The Docker engine stops and comes back while env-manager runs.

This test stops the machine's real dockerd (the one scripts/bootstrap.sh started) and starts it
again, whatever happens; it needs the local socket, not a remote DOCKER_HOST.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import grpc
import pytest
from agent_infra.wire import env_manager_pb2 as pb
from agent_infra.wire import env_manager_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.daemon_support import REPO, eventually, running_daemon
from tests.docker_support import require_docker

SOCKET = "/var/run/docker.sock"


def _dockerd_pids() -> list[int]:
    found = subprocess.run(["pgrep", "-x", "dockerd"], capture_output=True, text=True)
    return [int(pid) for pid in found.stdout.split()]


def _systemd_manages_docker() -> bool:
    if not shutil.which("systemctl") or not Path("/run/systemd/system").exists():
        return False
    state = subprocess.run(["systemctl", "is-active", "docker"], capture_output=True, text=True)
    return state.stdout.strip() == "active"


async def _run(*command: str) -> None:
    process = await asyncio.create_subprocess_exec(*command)
    assert await process.wait() == 0, f"{command} failed"


async def _engine_answers() -> bool:
    process = await asyncio.create_subprocess_exec(
        "docker", "info", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return await process.wait() == 0


@contextlib.asynccontextmanager
async def docker_engine_control() -> AsyncIterator[
    tuple[Callable[[], Awaitable[None]], Callable[[], Awaitable[None]]]
]:
    """(stop, start) coroutines for the local engine; it is running again afterwards."""
    if os.environ.get("DOCKER_HOST", f"unix://{SOCKET}") != f"unix://{SOCKET}":
        pytest.fail("this test stops the local dockerd; unset DOCKER_HOST to run it")
    await (await require_docker()).close()
    by_systemd = _systemd_manages_docker()
    if not by_systemd and not _dockerd_pids():
        pytest.fail("no local dockerd process found to stop and restart")

    async def stop() -> None:
        if by_systemd:
            await _run("systemctl", "stop", "docker.socket", "docker")
            return
        for pid in _dockerd_pids():
            os.kill(pid, signal.SIGTERM)

        async def gone() -> bool:
            return not _dockerd_pids()

        await eventually(gone, "dockerd to exit", timeout=60)

    async def start() -> None:
        if by_systemd:
            await _run("systemctl", "start", "docker")
        elif not _dockerd_pids():
            # As scripts/bootstrap.sh starts it: detached, in its own session.
            log = REPO / ".state" / "dockerd.log"
            log.parent.mkdir(exist_ok=True)
            await _run("sh", "-c", f"setsid dockerd --host unix://{SOCKET} >>'{log}' 2>&1 "
                                   "</dev/null &")
        await eventually(_engine_answers, "the Docker engine to answer again", timeout=90,
                         interval=0.5)

    try:
        yield stop, start
    finally:
        await start()


async def test_docker_down_then_back_while_env_manager_runs(tmp_path: Path) -> None:
    async with docker_engine_control() as (stop, start), running_daemon(
        "env-manager", tmp_path, args=["--state-dir", str(tmp_path / "state")]
    ) as daemon:
        channel = daemon.channel()
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(), timeout=300)
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
        stub = env_manager_pb2_grpc.EnvManagerServiceStub(channel)

        await stop()
        async with asyncio.timeout(30):
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stub.GetServicesStatus(pb.GetServicesStatusRequest(), timeout=60)
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        assert SOCKET in (error.value.details() or "")
        async with aiohttp.ClientSession() as session, session.get(
            f"{daemon.http_url}/health"
        ) as response:
            assert response.status == 503
            assert SOCKET in (await response.json())["reason"]
        assert daemon.process.returncode is None, "env-manager must outlive the engine"

        await start()
        async with asyncio.timeout(60):
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
        await stub.GetServicesStatus(pb.GetServicesStatusRequest(), timeout=60)
        watch.cancel()
