"""`EnvManagerClient`: typed async access to env-manager (env_manager.v1), one method per RPC.

    from agent_infra.client import EnvManagerClient

    async with EnvManagerClient() as env:            # ENV_MANAGER_GRPC_ADDR or 127.0.0.1:50100
        async for update in env.start_services(["api"]):
            print(update.service_name, update.status, update.progress)
        status = await env.get_services_status()
        result = await env.execute_task("t-1", "cpu_short", {"command": ["echo", "hi"]})

Unary calls have a default deadline (see `Deadlines`), overridable with `timeout=`. Streams have
none unless `timeout=` is given; stop reading (break, or `aclose()` the iterator) and the RPC is
cancelled. Failures raise the `client.errors` hierarchy.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

from agent_infra.wire import env_manager_pb2 as pb
from agent_infra.wire import env_manager_pb2_grpc

from . import _env_manager_wire as wire
from ._base import names_tuple
from ._payload import encode_payload
from ._transport import ServiceTarget
from .env_manager_models import (
    HealthUpdate,
    ImagePullProgress,
    LogEntry,
    ResourceAvailability,
    RestartServiceResult,
    ServiceStatus,
    ServiceStatusUpdate,
    StopServicesResult,
    TaskExecution,
)
from .sandbox import SandboxCalls

__all__ = ["ENV_MANAGER", "EnvManagerClient"]

# Retried on UNAVAILABLE (the same request twice has the effect of one):
#   GetServicesStatus, GetResourceAvailability: reads.
#   StreamHealth, StreamLogs, PullImages: reads, or a pull that finds the image already there;
#     gRPC retries a stream only before its first message, so nothing is seen twice.
#   StopServices: stopping what is stopped reports "not running" and changes nothing.
#   ExecuteTask: env-manager runs a task_id at most once; a repeat attaches to the running
#     container or returns the stored result.
#   ListSandboxes, GetFile: reads. PutFile: the same content written again. DeleteSandbox: a
#     repeat answers NOT_FOUND (Sandbox.delete() takes that as deleted).
# Not retried: StartServices (a second plan may recreate containers whose config an override
# changed, and its progress stream would start over), RestartService (each call restarts),
# CreateSandbox (a second sandbox) and SandboxExec (the command would run again).
ENV_MANAGER = ServiceTarget(
    display_name="env-manager",
    grpc_service="env_manager.v1.EnvManagerService",
    address_env="ENV_MANAGER_GRPC_ADDR",
    default_address="127.0.0.1:50100",
    retryable_methods=("GetServicesStatus", "GetResourceAvailability", "StreamHealth",
                       "StreamLogs", "PullImages", "StopServices", "ExecuteTask", "CancelTask",
                       "ListSandboxes", "GetFile", "PutFile", "DeleteSandbox"),
)


class EnvManagerClient(SandboxCalls):
    """Client for env-manager: the service stack, task containers and host capacity.

    Args:
        address: ``host:port`` to dial. Default: ``config.address``, else the
            ENV_MANAGER_GRPC_ADDR environment variable (read now), else ``127.0.0.1:50100``.
        config: TLS, token, timeouts and deadlines (`ConnectionConfig`).

    Nothing is dialled until ``async with``, `connect()` or the first call; connecting gives
    up after ``config.connect_timeout`` with `InfraUnavailable`. Close with `close()` (or leave
    the ``async with`` block).
    """

    _target = ENV_MANAGER
    _sandbox_pb = pb
    _class_field = "workload_class"

    def _make_stub(self, channel: Any) -> Any:
        return env_manager_pb2_grpc.EnvManagerServiceStub(channel)

    def start_services(self, names: str | Iterable[str] = (), *, parallel: bool = True,
                       overrides: Mapping[str, str] | None = None,
                       timeout: float | None = None) -> AsyncIterator[ServiceStatusUpdate]:
        """Start services (all when none named) with their dependencies; stream each transition.

        Args:
            names: services or groups to start; empty means all.
            parallel: start independent services at once; False starts one at a time.
            overrides: per-call changes, ``{"NAME.image": ..., "NAME.env.KEY": ...}``.
            timeout: deadline for the whole stream, in seconds (default: none).

        The stream ends once every service is healthy or has failed. Starting continues on
        the server even when the caller stops reading.
        """
        request = pb.StartServicesRequest(service_names=names_tuple(names), parallel=parallel,
                                          overrides=dict(overrides or {}))
        return self._stream("StartServices", request, timeout, wire.status_update)

    async def stop_services(self, names: str | Iterable[str] = (), *, timeout_seconds: int = 0,
                            timeout: float | None = None) -> StopServicesResult:
        """Stop and remove services (all when none named), and what depends on them first.

        Args:
            timeout_seconds: grace before a container is killed; 0 means each service's own.
            timeout: call deadline (default: ``deadlines.control`` + timeout_seconds).
        """
        request = pb.StopServicesRequest(service_names=names_tuple(names),
                                         timeout_seconds=timeout_seconds)
        deadline = _or_default(timeout, self._config.deadlines.control + max(timeout_seconds, 0))
        return wire.stop_result(await self._unary("StopServices", request, deadline))

    async def restart_service(self, name: str, *, timeout_seconds: int = 0,
                              timeout: float | None = None) -> RestartServiceResult:
        """Stop one service and start it again, waiting for it to be healthy.

        Args:
            timeout_seconds: grace for the stop; 0 means the service's own.
            timeout: call deadline (default: ``deadlines.control`` + timeout_seconds).

        Raises NotFound for an unknown service.
        """
        request = pb.RestartServiceRequest(service_name=name, timeout_seconds=timeout_seconds)
        deadline = _or_default(timeout, self._config.deadlines.control + max(timeout_seconds, 0))
        return wire.restart_result(await self._unary("RestartService", request, deadline))

    async def get_services_status(self, names: str | Iterable[str] = (), *,
                                  timeout: float | None = None) -> dict[str, ServiceStatus]:
        """Each service's state from the engine (all when none named), by service name.

        Raises NotFound when a name is unknown.
        """
        request = pb.GetServicesStatusRequest(service_names=names_tuple(names))
        deadline = _or_default(timeout, self._config.deadlines.read)
        return wire.services_status(await self._unary("GetServicesStatus", request, deadline))

    def stream_health(self, names: str | Iterable[str] = (), *, interval_seconds: int = 5,
                      timeout: float | None = None) -> AsyncIterator[HealthUpdate]:
        """Probe services every `interval_seconds` (clamped by the server to 1-300 s).

        Sends each service's state first, then every change, plus a periodic heartbeat (with
        ``details["heartbeat"] == "true"``), until the caller stops reading.
        """
        request = pb.StreamHealthRequest(service_names=names_tuple(names),
                                         interval_seconds=interval_seconds)
        return self._stream("StreamHealth", request, timeout, wire.health_update)

    async def get_resource_availability(self, workload_class: str, *,
                                        timeout: float | None = None) -> ResourceAvailability:
        """Capacity and use of a workload class, and the host's CPUs, memory and GPUs.

        Raises InvalidArgument for an unknown class.
        """
        request = pb.GetResourceAvailabilityRequest(workload_class=workload_class)
        deadline = _or_default(timeout, self._config.deadlines.read)
        return wire.availability(await self._unary("GetResourceAvailability", request, deadline))

    async def cancel_task(self, task_id: str, *, timeout: float | None = None) -> bool:
        """Kill the running container of an ExecuteTask task_id; False when none was running.

        The task's ExecuteTask call then returns a failed result saying it was cancelled.
        """
        request = pb.CancelTaskRequest(task_id=task_id)
        deadline = _or_default(timeout, self._config.deadlines.read)
        return bool((await self._unary("CancelTask", request, deadline)).success)

    async def execute_task(self, task_id: str, workload_class: str,
                           payload: Mapping[str, object], *, timeout_seconds: int = 0,
                           timeout: float | None = None, attempt: int = 0) -> TaskExecution:
        """Run one task in a fresh container of `workload_class` and return its result.

        Args:
            task_id: the task's id; env-manager runs an id at most once (a repeat attaches to
                the run or returns its stored result), so calling again after an error is safe.
            payload: ``command`` (a list, or a shell string), ``image``, ``env`` (a dict),
                ``stdin``, ``workdir``. Strings are sent as they are, other values as JSON.
            timeout_seconds: the task's time limit; 0 means the class's default.
            attempt: the caller's attempt number (AGENT_INFRA_ATTEMPT of handler and
                execution tasks); 0 when it keeps none. Not part of the request's identity.
            timeout: call deadline (default: timeout_seconds, or ``deadlines.task`` when 0,
                plus ``deadlines.task_margin``).

        A non-zero exit or a timeout is a result with ``success=False``, not an exception.
        Raises InvalidArgument for a bad payload or unknown class, FailedPrecondition for a
        disabled class or a missing image, AlreadyExists when the id ran as another class.
        """
        request = pb.ExecuteTaskRequest(task_id=task_id, workload_class=workload_class,
                                        payload=encode_payload(payload),
                                        timeout_seconds=timeout_seconds, attempt=attempt)
        deadlines = self._config.deadlines
        deadline = _or_default(timeout, (timeout_seconds if timeout_seconds > 0 else deadlines.task)
                               + deadlines.task_margin)
        return wire.task_execution(await self._unary("ExecuteTask", request, deadline))

    def pull_images(self, names: str | Iterable[str] = (), *,
                    timeout: float | None = None) -> AsyncIterator[ImagePullProgress]:
        """Pull images (every image the configured services need when none named).

        Each image ends with a ``complete`` or an ``error`` item; one failing does not stop
        the others.
        """
        request = pb.PullImagesRequest(image_names=names_tuple(names))
        return self._stream("PullImages", request, timeout, wire.pull_progress)

    def stream_logs(self, service_name: str, *, follow: bool = False, tail: int = 0,
                    since: float = 0, timeout: float | None = None) -> AsyncIterator[LogEntry]:
        """A service's container log lines, oldest first.

        Args:
            tail: only the last `tail` lines (0: all).
            since: only lines at or after this unix time (0: no limit).
            follow: keep streaming new lines until the container stops or the caller stops
                reading.

        Raises NotFound for an unknown service or one with no container.
        """
        request = pb.StreamLogsRequest(service_name=service_name, follow=follow, tail=tail,
                                       since_timestamp=int(since))
        return self._stream("StreamLogs", request, timeout, wire.log_entry)


def _or_default(timeout: float | None, default: float) -> float:
    return default if timeout is None else timeout
