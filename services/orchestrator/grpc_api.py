"""orchestrator.v1 on the wire: protobuf in, domain calls, protobuf out.

Domain errors become their gRPC status in the runtime's middleware. Where a response has
`success`/`error` fields they are filled too, for the original clients that read only those.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from agent_infra.client.sandbox import ExecResult, SandboxInfo
from agent_infra.runtime.errors import InvalidArgument
from agent_infra.wire import orchestrator_pb2 as pb
from agent_infra.wire import orchestrator_pb2_grpc

from . import compat
from .domain import Orchestrator
from .model import Task, TaskRequest, TaskState
from .sandboxes import SandboxRouter, caller_identity
from .workflows.records import Run

Context = Any  # grpc.aio.ServicerContext; grpc is untyped
VERSION_KEY = "version"


class OrchestratorServicer(orchestrator_pb2_grpc.OrchestratorServiceServicer):
    def __init__(self, domain: Callable[[], Orchestrator], version: str) -> None:
        self._get = domain
        self._version = version

    async def SubmitTask(self, request: pb.SubmitTaskRequest, context: Context
                         ) -> pb.SubmitTaskResponse:
        task, _ = await self._get().scheduler.submit(TaskRequest(
            id=request.id, task_class=getattr(request, "class"),
            payload=dict(request.payload), priority=request.priority,
            workflow_id=request.workflow_id, timeout_seconds=request.timeout_seconds,
            max_attempts=request.max_attempts))
        return pb.SubmitTaskResponse(success=True, task_id=task.id)

    async def GetTaskStatus(self, request: pb.GetTaskStatusRequest, context: Context
                            ) -> pb.GetTaskStatusResponse:
        if not request.task_id:
            raise InvalidArgument("task_id is required")
        task = await self._get().scheduler.get(request.task_id)
        return pb.GetTaskStatusResponse(**_task_fields(task))

    async def StreamTaskResults(self, request: pb.StreamTaskResultsRequest, context: Context
                                ) -> AsyncIterator[pb.TaskResult]:
        async for task in self._get().watch_tasks(list(request.task_ids),
                                                  request.include_completed):
            yield _task_result(task)

    async def CancelTask(self, request: pb.CancelTaskRequest, context: Context
                         ) -> pb.CancelTaskResponse:
        if not request.task_id:
            raise InvalidArgument("task_id is required")
        task = await self._get().scheduler.cancel(request.task_id)
        cancelled = task.status is TaskState.CANCELLED
        return pb.CancelTaskResponse(
            success=cancelled, status=task.status.value,
            error="" if cancelled else f"task already {task.status.value}")

    async def ListTasks(self, request: pb.ListTasksRequest, context: Context
                        ) -> pb.ListTasksResponse:
        page = await self._get().list_tasks(
            statuses=list(request.statuses), task_class=request.task_class,
            workflow_id=request.workflow_id, page_size=request.page_size,
            page_token=request.page_token)
        return pb.ListTasksResponse(
            tasks=[pb.TaskSummary(
                task_id=t.id, status=t.status.value, task_class=t.task_class,
                priority=t.priority, workflow_id=t.workflow_id, attempts=t.attempts,
                submitted_at=int(t.submitted_at), completed_at=int(t.finished_at),
                error=t.error) for t in page.tasks],
            next_page_token=page.next_page_token)

    # -- sandbox sessions (sandboxes.py) -------------------------------------------------------

    @property
    def _sandboxes(self) -> SandboxRouter:
        return self._get().sandboxes

    async def CreateSandbox(self, request: pb.CreateSandboxRequest, context: Context
                            ) -> pb.CreateSandboxResponse:
        info = await self._sandboxes.create(
            request.task_class, request.image, dict(request.env), request.ttl_seconds,
            request.idle_timeout_seconds, _caller(context))
        return pb.CreateSandboxResponse(sandbox_id=info.sandbox_id, sandbox=_sandbox_info(info))

    async def SandboxExec(self, request: pb.SandboxExecRequest, context: Context
                          ) -> AsyncIterator[pb.SandboxExecOutput]:
        async for item in self._sandboxes.exec(
                request.sandbox_id, _caller(context), list(request.command), request.stdin,
                dict(request.env), request.timeout_seconds, request.workdir):
            if isinstance(item, ExecResult):
                yield pb.SandboxExecOutput(exited=True, exit_code=item.exit_code,
                                           timed_out=item.timed_out, truncated=item.truncated,
                                           duration_ms=item.duration_ms)
            else:
                yield pb.SandboxExecOutput(stream=item.stream, data=item.data)

    async def PutFile(self, request: pb.PutFileRequest, context: Context) -> pb.PutFileResponse:
        path = await self._sandboxes.put_file(request.sandbox_id, _caller(context), request.path,
                                              request.content, request.mode)
        return pb.PutFileResponse(path=path, size_bytes=len(request.content))

    async def GetFile(self, request: pb.GetFileRequest, context: Context) -> pb.GetFileResponse:
        path, data = await self._sandboxes.get_file(request.sandbox_id, _caller(context),
                                                    request.path)
        return pb.GetFileResponse(path=path, content=data, size_bytes=len(data))

    async def ListSandboxes(self, request: pb.ListSandboxesRequest, context: Context
                            ) -> pb.ListSandboxesResponse:
        found = await self._sandboxes.owned(_caller(context), request.task_class)
        return pb.ListSandboxesResponse(sandboxes=[_sandbox_info(info) for info in found])

    async def DeleteSandbox(self, request: pb.DeleteSandboxRequest, context: Context
                            ) -> pb.DeleteSandboxResponse:
        await self._sandboxes.delete(request.sandbox_id, _caller(context))
        return pb.DeleteSandboxResponse(success=True, message="deleted")

    async def CreateWorkflow(self, request: pb.CreateWorkflowRequest, context: Context
                             ) -> pb.CreateWorkflowResponse:
        workflow_id, version, _ = await self._get().workflows.create(
            request.id, request.name, request.description, request.spec)
        return pb.CreateWorkflowResponse(success=True, workflow_id=workflow_id, version=version)

    async def ListWorkflows(self, request: pb.ListWorkflowsRequest, context: Context
                            ) -> pb.ListWorkflowsResponse:
        return pb.ListWorkflowsResponse(workflows=[pb.WorkflowSummary(
            workflow_id=w.id, name=w.name, description=w.description, version=w.version,
            total_steps=len(w.spec.steps), created_at=int(w.created_at),
        ) for w in await self._get().workflows.list()])

    async def StartWorkflowRun(self, request: pb.StartWorkflowRunRequest, context: Context
                               ) -> pb.StartWorkflowRunResponse:
        run, created = await self._get().workflows.start_run(
            request.workflow_id, request.idempotency_key, dict(request.input))
        return pb.StartWorkflowRunResponse(success=True, run_id=run.run_id, created=created)

    async def StreamWorkflowStatus(self, request: pb.StreamWorkflowStatusRequest,
                                   context: Context) -> AsyncIterator[pb.WorkflowStatusUpdate]:
        if not request.run_id:
            raise InvalidArgument("run_id is required")
        async for run in self._get().workflows.watch(request.run_id):
            yield _run_update(run)

    async def GetMetrics(self, request: pb.GetMetricsRequest, context: Context
                         ) -> pb.MetricsResponse:
        metrics = await compat.select_metrics(self._get(), list(request.metric_names))
        return pb.MetricsResponse(metrics=metrics, timestamp=int(time.time()))

    async def StreamEvents(self, request: pb.StreamEventsRequest, context: Context
                           ) -> AsyncIterator[pb.SystemEvent]:
        subscription = self._get().events.subscribe(list(request.event_types),
                                                    float(request.since_timestamp))
        async with subscription:
            async for event in subscription:
                yield pb.SystemEvent(event_type=event.event_type, resource_id=event.resource_id,
                                     data={**event.data, "seq": str(event.seq)},
                                     timestamp=int(event.timestamp))

    async def Health(self, request: pb.HealthRequest, context: Context) -> pb.HealthResponse:
        # `healthy` is grpc.health.v1 "": the orchestrator accepts and stores work (the store);
        # a down env-manager or Slurm shows in `services`, its tasks waiting for it.
        domain = self._get()
        (serving, reason), states = await asyncio.gather(domain.readiness(), domain.health())
        return pb.HealthResponse(healthy=serving, version=self._version,
                                 services=compat.health_services(states, serving, reason))


def _task_fields(task: Task) -> dict[str, Any]:
    """A task as GetTaskStatusResponse and TaskResult both carry it (the same field names)."""
    return {
        "task_id": task.id, "status": task.status.value, "result": task.result,
        "error": task.error, "attempts": task.attempts, "task_class": task.task_class,
        "priority": task.priority, "workflow_id": task.workflow_id,
        "submitted_at": int(task.submitted_at), "started_at": int(task.started_at),
        "completed_at": int(task.finished_at), "duration_ms": task.duration_ms,
    }


def _task_result(task: Task) -> pb.TaskResult:
    return pb.TaskResult(**_task_fields(task))


def _run_update(run: Run) -> pb.WorkflowStatusUpdate:
    return pb.WorkflowStatusUpdate(
        run_id=run.run_id, status=run.status.value, current_step=run.current_step,
        steps_completed=run.steps_completed, total_steps=run.total_steps, output=run.output,
        error=run.error)


def _caller(context: Context) -> str:
    """The caller's identity for sandbox ownership: a hash of the bearer token it sent."""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            text = value.decode() if isinstance(value, bytes) else str(value)
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return caller_identity(token.strip())
    return ""


def _sandbox_info(info: SandboxInfo) -> pb.SandboxInfo:
    return pb.SandboxInfo(
        sandbox_id=info.sandbox_id, task_class=info.task_class, image=info.image,
        created_at=info.created_at, expires_at=info.expires_at,
        last_used_at=info.last_used_at, idle_timeout_seconds=info.idle_timeout_seconds,
        running_execs=info.running_execs)
