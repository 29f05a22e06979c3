"""The client's retry policy on a real loopback gRPC server that answers UNAVAILABLE at first.

Idempotent methods are sent again after UNAVAILABLE; the others reach the server exactly once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from agent_infra.client import ConnectionConfig, EnvManagerClient, InfraUnavailable
from agent_infra.wire import env_manager_pb2 as pb
from agent_infra.wire import env_manager_pb2_grpc


class FlakyEnvManager(env_manager_pb2_grpc.EnvManagerServiceServicer):
    """Fails each method's first `failures` calls with UNAVAILABLE, then answers."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: Counter[str] = Counter()
        self.metadata: list[dict[str, str]] = []

    async def _gate(self, method: str, context: Any) -> None:
        self.calls[method] += 1
        self.metadata.append({k: v for k, v in context.invocation_metadata() or ()})
        if self.calls[method] <= self.failures:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"{method} not ready yet")

    async def GetServicesStatus(self, request: pb.GetServicesStatusRequest, context: Any
                                ) -> pb.ServicesStatusResponse:
        await self._gate("GetServicesStatus", context)
        return pb.ServicesStatusResponse(services={"a": pb.ServiceStatus(name="a",
                                                                          status="running")})

    async def ExecuteTask(self, request: pb.ExecuteTaskRequest, context: Any
                          ) -> pb.ExecuteTaskResponse:
        await self._gate("ExecuteTask", context)
        return pb.ExecuteTaskResponse(success=True, result=dict(request.payload))

    async def CancelTask(self, request: pb.CancelTaskRequest, context: Any
                         ) -> pb.CancelTaskResponse:
        await self._gate("CancelTask", context)
        return pb.CancelTaskResponse(success=True)

    async def RestartService(self, request: pb.RestartServiceRequest, context: Any
                             ) -> pb.RestartServiceResponse:
        await self._gate("RestartService", context)
        return pb.RestartServiceResponse(success=True)

    async def StartServices(self, request: pb.StartServicesRequest, context: Any
                            ) -> AsyncIterator[pb.ServiceStatusUpdate]:
        await self._gate("StartServices", context)
        yield pb.ServiceStatusUpdate(service_name="a", status="healthy", progress=100)

    async def StreamLogs(self, request: pb.StreamLogsRequest, context: Any
                         ) -> AsyncIterator[pb.LogEntry]:
        await self._gate("StreamLogs", context)
        yield pb.LogEntry(service_name=request.service_name, message="line")

    # Not used here; the base class makes every RPC abstract.
    async def StopServices(self, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in this fake")

    async def GetResourceAvailability(self, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in this fake")

    async def StreamHealth(self, request: Any, context: Any) -> AsyncIterator[pb.HealthUpdate]:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in this fake")
        yield pb.HealthUpdate()

    async def PullImages(self, request: Any, context: Any) -> AsyncIterator[pb.ImagePullProgress]:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in this fake")
        yield pb.ImagePullProgress()

    async def CreateSandbox(self, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in this fake")

    async def SandboxExec(self, request: Any, context: Any) -> AsyncIterator[pb.SandboxExecOutput]:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in this fake")
        yield pb.SandboxExecOutput()

    async def PutFile(self, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in this fake")

    async def GetFile(self, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in this fake")

    async def ListSandboxes(self, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in this fake")

    async def DeleteSandbox(self, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in this fake")


async def serve(servicer: FlakyEnvManager) -> tuple[Any, str]:
    server = grpc.aio.server()
    env_manager_pb2_grpc.add_EnvManagerServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


async def test_idempotent_methods_are_retried_after_unavailable() -> None:
    servicer = FlakyEnvManager(failures=2)
    server, address = await serve(servicer)
    try:
        async with EnvManagerClient(address) as em:
            assert set(await em.get_services_status()) == {"a"}
            task = await em.execute_task("t-1", "cpu_short", {"n": 1})
            assert task.result == {"n": "1"}
            assert [e.message async for e in em.stream_logs("svc")] == ["line"]
        assert servicer.calls == {"GetServicesStatus": 3, "ExecuteTask": 3, "StreamLogs": 3}
    finally:
        await server.stop(None)


async def test_non_idempotent_methods_are_sent_once() -> None:
    servicer = FlakyEnvManager(failures=1)
    server, address = await serve(servicer)
    try:
        async with EnvManagerClient(address) as em:
            with pytest.raises(InfraUnavailable, match="RestartService not ready yet"):
                await em.restart_service("a")
            with pytest.raises(InfraUnavailable, match="StartServices not ready yet"):
                async for _ in em.start_services():
                    pass
        assert servicer.calls == {"RestartService": 1, "StartServices": 1}
    finally:
        await server.stop(None)


async def test_retries_give_up_with_the_servers_message() -> None:
    servicer = FlakyEnvManager(failures=100)
    server, address = await serve(servicer)
    try:
        async with EnvManagerClient(address) as em:
            with pytest.raises(InfraUnavailable, match="GetServicesStatus not ready yet"):
                await em.get_services_status()
        assert servicer.calls["GetServicesStatus"] == 5  # maxAttempts
    finally:
        await server.stop(None)


async def test_token_rides_on_every_call_including_retries() -> None:
    servicer = FlakyEnvManager(failures=1)
    server, address = await serve(servicer)
    try:
        async with EnvManagerClient(address, config=ConnectionConfig(token="tok")) as em:
            await em.get_services_status()
            assert [e.message async for e in em.stream_logs("svc")] == ["line"]
        assert len(servicer.metadata) == 4
        assert {m.get("authorization") for m in servicer.metadata} == {"Bearer tok"}
    finally:
        await server.stop(None)
