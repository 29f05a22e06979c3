"""orchestrator.v1 protobuf messages -> the client's dataclasses (orchestrator_models)."""

from __future__ import annotations

from typing import TypeVar

from agent_infra.wire import orchestrator_pb2 as pb

from . import orchestrator_models as models

_Task = TypeVar("_Task", models.TaskStatus, models.TaskResult)


def submit_result(message: pb.SubmitTaskResponse) -> models.SubmitResult:
    return models.SubmitResult(success=message.success, task_id=message.task_id,
                               error=message.error)


def task_status(message: pb.GetTaskStatusResponse) -> models.TaskStatus:
    return _task(models.TaskStatus, message)


def task_result(message: pb.TaskResult) -> models.TaskResult:
    return _task(models.TaskResult, message)


def _task(kind: type[_Task], message: pb.GetTaskStatusResponse | pb.TaskResult) -> _Task:
    return kind(
        task_id=message.task_id, status=message.status, result=dict(message.result),
        error=message.error, attempts=message.attempts, task_class=message.task_class,
        priority=message.priority, workflow_id=message.workflow_id,
        submitted_at=message.submitted_at, started_at=message.started_at,
        completed_at=message.completed_at, duration_ms=message.duration_ms,
    )


def cancel_result(message: pb.CancelTaskResponse) -> models.CancelResult:
    return models.CancelResult(success=message.success, status=message.status,
                               error=message.error)


def task_summary(message: pb.TaskSummary) -> models.TaskSummary:
    return models.TaskSummary(
        task_id=message.task_id, status=message.status, task_class=message.task_class,
        priority=message.priority, workflow_id=message.workflow_id, attempts=message.attempts,
        submitted_at=message.submitted_at, completed_at=message.completed_at,
        error=message.error,
    )


def task_page(message: pb.ListTasksResponse) -> models.TaskPage:
    return models.TaskPage(tasks=[task_summary(task) for task in message.tasks],
                           next_page_token=message.next_page_token)


def workflow_created(message: pb.CreateWorkflowResponse) -> models.WorkflowCreated:
    return models.WorkflowCreated(success=message.success, workflow_id=message.workflow_id,
                                  version=message.version, error=message.error)


def workflow_summaries(message: pb.ListWorkflowsResponse) -> list[models.WorkflowSummary]:
    return [models.WorkflowSummary(workflow_id=w.workflow_id, name=w.name,
                                   description=w.description, version=w.version,
                                   total_steps=w.total_steps, created_at=w.created_at)
            for w in message.workflows]


def run_started(message: pb.StartWorkflowRunResponse, idempotency_key: str) -> models.RunStarted:
    return models.RunStarted(success=message.success, run_id=message.run_id,
                             created=message.created, error=message.error,
                             idempotency_key=idempotency_key)


def workflow_status(message: pb.WorkflowStatusUpdate) -> models.WorkflowStatus:
    return models.WorkflowStatus(
        run_id=message.run_id, status=message.status, current_step=message.current_step,
        steps_completed=message.steps_completed, total_steps=message.total_steps,
        output=dict(message.output), error=message.error,
    )


def metrics(message: pb.MetricsResponse) -> models.Metrics:
    return models.Metrics(metrics=dict(message.metrics), timestamp=message.timestamp)


def system_event(message: pb.SystemEvent) -> models.SystemEvent:
    return models.SystemEvent(event_type=message.event_type, resource_id=message.resource_id,
                              data=dict(message.data), timestamp=message.timestamp)


def health_status(message: pb.HealthResponse) -> models.HealthStatus:
    return models.HealthStatus(healthy=message.healthy, version=message.version,
                               services=dict(message.services))
