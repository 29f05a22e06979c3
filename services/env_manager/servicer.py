"""env_manager.v1 on the wire: protobuf in, domain calls, protobuf out.

No decisions here. Domain errors raised below become their gRPC status in the runtime's
middleware (services/runtime/status.py).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from agent_infra.wire import env_manager_pb2 as pb
from agent_infra.wire import env_manager_pb2_grpc

from .health_watch import watch_health
from .image_pulls import pull_all
from .manager import EnvManager
from .resources import Availability
from .sandboxes.execs import Exit
from .sandboxes.manager import SandboxManager
from .sandboxes.model import Sandbox, owner_of
from .stack import ServiceState, StackManager
from .tasks.payload import caller_identity

Context = Any  # grpc.aio.ServicerContext; grpc is untyped


class EnvManagerServicer(env_manager_pb2_grpc.EnvManagerServiceServicer):
    def __init__(self, domain: Callable[[], EnvManager]) -> None:
        # The domain is built when the daemon starts, after servicers are registered.
        self._get = domain

    @property
    def _stack(self) -> StackManager:
        return self._get().stack

    async def StartServices(self, request: pb.StartServicesRequest, context: Context
                            ) -> AsyncIterator[pb.ServiceStatusUpdate]:
        updates = self._stack.start(list(request.service_names), request.parallel,
                                    dict(request.overrides))
        async for update in updates:
            yield pb.ServiceStatusUpdate(service_name=update.service, status=update.status,
                                         message=update.message, progress=update.progress)

    async def StopServices(self, request: pb.StopServicesRequest, context: Context
                           ) -> pb.StopServicesResponse:
        timeout = float(request.timeout_seconds) if request.timeout_seconds > 0 else None
        outcome = await self._stack.stop(list(request.service_names), timeout)
        return pb.StopServicesResponse(success=outcome.success, service_results=outcome.results)

    async def RestartService(self, request: pb.RestartServiceRequest, context: Context
                             ) -> pb.RestartServiceResponse:
        timeout = float(request.timeout_seconds) if request.timeout_seconds > 0 else None
        success, message = await self._stack.restart(request.service_name, timeout)
        return pb.RestartServiceResponse(success=success, message=message)

    async def GetServicesStatus(self, request: pb.GetServicesStatusRequest, context: Context
                                ) -> pb.ServicesStatusResponse:
        states = await self._stack.status(list(request.service_names))
        return pb.ServicesStatusResponse(
            services={name: _service_status(state) for name, state in states.items()})

    async def StreamHealth(self, request: pb.StreamHealthRequest, context: Context
                           ) -> AsyncIterator[pb.HealthUpdate]:
        async for change in watch_health(self._stack, list(request.service_names),
                                         float(request.interval_seconds)):
            yield pb.HealthUpdate(service_name=change.service, healthy=change.healthy,
                                  message=change.message, timestamp=change.timestamp,
                                  details=change.details)

    async def GetResourceAvailability(self, request: pb.GetResourceAvailabilityRequest,
                                      context: Context) -> pb.ResourceAvailabilityResponse:
        manager = self._get()
        availability = await manager.availability(request.workload_class)
        response = _availability(availability)
        for name, workload in manager.runner.classes.items():
            response.workload_contracts[name] = json.dumps(workload.contract())
        return response

    async def ExecuteTask(self, request: pb.ExecuteTaskRequest, context: Context
                          ) -> pb.ExecuteTaskResponse:
        outcome = await self._get().runner.execute(
            request.task_id, request.workload_class, dict(request.payload),
            request.timeout_seconds, caller_identity(_bearer_token(context)),
            attempt=request.attempt)
        return pb.ExecuteTaskResponse(success=outcome.success, result=outcome.result,
                                      error=outcome.error, latency_ms=outcome.latency_ms)

    async def CancelTask(self, request: pb.CancelTaskRequest, context: Context
                         ) -> pb.CancelTaskResponse:
        killed = await self._get().runner.cancel(request.task_id)
        return pb.CancelTaskResponse(
            success=killed, message="killed" if killed else "no running container for the task")

    # -- sandbox sessions (sandboxes/) --------------------------------------------------------

    @property
    def _sandboxes(self) -> SandboxManager:
        return self._get().sandboxes

    async def CreateSandbox(self, request: pb.CreateSandboxRequest, context: Context
                            ) -> pb.CreateSandboxResponse:
        sandbox = await self._sandboxes.create(
            request.workload_class, request.image, dict(request.env), request.ttl_seconds,
            request.idle_timeout_seconds, _owner(context, request.on_behalf_of))
        return pb.CreateSandboxResponse(sandbox_id=sandbox.sandbox_id,
                                        sandbox=_sandbox_info(sandbox))

    async def SandboxExec(self, request: pb.SandboxExecRequest, context: Context
                          ) -> AsyncIterator[pb.SandboxExecOutput]:
        items = self._sandboxes.exec(
            request.sandbox_id, _owner(context, request.on_behalf_of), list(request.command),
            request.stdin, dict(request.env), request.timeout_seconds, request.workdir)
        async for item in items:
            if isinstance(item, Exit):
                yield pb.SandboxExecOutput(exited=True, exit_code=item.exit_code,
                                           timed_out=item.timed_out, truncated=item.truncated,
                                           duration_ms=item.duration_ms)
            else:
                yield pb.SandboxExecOutput(stream=item.stream, data=item.data)

    async def PutFile(self, request: pb.PutFileRequest, context: Context) -> pb.PutFileResponse:
        path, size = await self._sandboxes.put_file(
            request.sandbox_id, _owner(context, request.on_behalf_of), request.path,
            request.content, request.mode)
        return pb.PutFileResponse(path=path, size_bytes=size)

    async def GetFile(self, request: pb.GetFileRequest, context: Context) -> pb.GetFileResponse:
        path, data = await self._sandboxes.get_file(
            request.sandbox_id, _owner(context, request.on_behalf_of), request.path)
        return pb.GetFileResponse(path=path, content=data, size_bytes=len(data))

    async def ListSandboxes(self, request: pb.ListSandboxesRequest, context: Context
                            ) -> pb.ListSandboxesResponse:
        found = self._sandboxes.owned(_owner(context, request.on_behalf_of),
                                     request.workload_class)
        return pb.ListSandboxesResponse(sandboxes=[_sandbox_info(s) for s in found])

    async def DeleteSandbox(self, request: pb.DeleteSandboxRequest, context: Context
                            ) -> pb.DeleteSandboxResponse:
        await self._sandboxes.delete(request.sandbox_id, _owner(context, request.on_behalf_of))
        return pb.DeleteSandboxResponse(success=True, message="deleted")

    async def PullImages(self, request: pb.PullImagesRequest, context: Context
                         ) -> AsyncIterator[pb.ImagePullProgress]:
        names = self._get().pullable(list(request.image_names))
        async for progress in pull_all(self._stack.engine, names):
            yield pb.ImagePullProgress(image_name=progress.image, status=progress.status,
                                       current=progress.current, total=progress.total,
                                       progress_percent=progress.percent,
                                       message=progress.message)

    async def StreamLogs(self, request: pb.StreamLogsRequest, context: Context
                         ) -> AsyncIterator[pb.LogEntry]:
        state, lines = await self._stack.logs(request.service_name, follow=request.follow,
                                              tail=request.tail, since=request.since_timestamp)
        async for line in lines:
            yield pb.LogEntry(service_name=request.service_name, container_id=state.id,
                              stream=line.stream, message=line.message,
                              timestamp=line.timestamp)


def _bearer_token(context: Context) -> str | None:
    """The bearer token the call carried, if any (checked by the runtime's auth when one is
    configured): it identifies the caller a task id is bound to."""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            text = value.decode() if isinstance(value, bytes) else str(value)
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


def _owner(context: Context, on_behalf_of: str) -> str:
    return owner_of(caller_identity(_bearer_token(context)), on_behalf_of)


def _sandbox_info(sandbox: Sandbox) -> pb.SandboxInfo:
    return pb.SandboxInfo(
        sandbox_id=sandbox.sandbox_id, workload_class=sandbox.workload_class,
        image=sandbox.image, created_at=int(sandbox.created_at),
        expires_at=int(sandbox.expires_at), last_used_at=int(sandbox.last_used_at),
        idle_timeout_seconds=int(sandbox.idle_timeout), running_execs=sandbox.running_execs)


def _service_status(state: ServiceState) -> pb.ServiceStatus:
    usage = state.usage
    return pb.ServiceStatus(
        name=state.name, status=state.status, container_id=state.container_id,
        ports=state.ports, health_checks=state.health_checks, started_at=state.started_at,
        resource_usage=pb.ResourceUsage(
            cpu_percent=usage.cpu_percent, memory_bytes=usage.memory_bytes,
            network_rx_bytes=usage.network_rx_bytes, network_tx_bytes=usage.network_tx_bytes,
        ) if usage else None,
    )


def _availability(availability: Availability) -> pb.ResourceAvailabilityResponse:
    hardware = availability.hardware
    return pb.ResourceAvailabilityResponse(
        available=availability.available, capacity=availability.capacity,
        in_use=availability.in_use,
        hardware=pb.HardwareInfo(
            cpu_cores=hardware.cpu_cores, memory_bytes=hardware.memory_bytes,
            gpus=[pb.GPU(index=g.index, name=g.name, memory_bytes=g.memory_bytes,
                         utilization_percent=g.utilization_percent) for g in hardware.gpus],
        ),
    )
