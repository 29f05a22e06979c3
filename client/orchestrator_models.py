"""What OrchestratorClient returns: frozen dataclasses with the wire API's field names.

Field meanings are those of orchestrator.v1 (WIRE-API.md); timestamps are unix seconds (0 when
not reached yet), durations in milliseconds. Maps of strings stay as the wire has them
(``result``, ``output``, ``data``); the ``decoded_*`` properties give the values back as Python
values where they are JSON (see `client._payload.decode_value`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from ._payload import decode_payload

__all__ = [
    "TERMINAL_STATUSES",
    "CancelResult",
    "HealthStatus",
    "Metrics",
    "RunStarted",
    "SubmitResult",
    "SystemEvent",
    "TaskPage",
    "TaskResult",
    "TaskStatus",
    "TaskSummary",
    "WorkflowCreated",
    "WorkflowStatus",
    "WorkflowSummary",
]

#: Task and run states that do not change any more.
TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})


@dataclass(frozen=True)
class SubmitResult:
    """Outcome of SubmitTask. An error the server reports raises instead (`InvalidArgument`...)."""

    success: bool
    #: The task's id: the caller's, or the one the client made up (``task-<32 hex digits>``).
    task_id: str
    error: str = ""


@dataclass(frozen=True)
class _TaskFacts:
    """What GetTaskStatus and each item of StreamTaskResults say about a task."""

    task_id: str
    #: pending, running, completed, failed or cancelled.
    status: str
    #: The task's output as the wire carries it (for env-manager tasks: exit_code, stdout, ...).
    result: dict[str, str]
    error: str
    #: Dispatches started so far.
    attempts: int = 0
    task_class: str = ""
    priority: int = 0
    workflow_id: str = ""
    submitted_at: int = 0
    started_at: int = 0
    completed_at: int = 0
    duration_ms: float = 0.0

    @property
    def decoded_result(self) -> dict[str, object]:
        """`result` with JSON values decoded (``"0"`` -> 0, ``'{"a":1}'`` -> dict)."""
        return decode_payload(self.result)

    @property
    def finished(self) -> bool:
        """True once the task is completed, failed or cancelled."""
        return self.status in TERMINAL_STATUSES


@dataclass(frozen=True)
class TaskStatus(_TaskFacts):
    """A task's current state (GetTaskStatus)."""

    @property
    def succeeded(self) -> bool:
        return self.status == "completed"


@dataclass(frozen=True)
class TaskResult(_TaskFacts):
    """One item of StreamTaskResults: a task's state when the stream starts, then each change."""

    def as_status(self) -> TaskStatus:
        """The same facts as GetTaskStatus would give, without another call."""
        return TaskStatus(**{f.name: getattr(self, f.name) for f in fields(_TaskFacts)})


@dataclass(frozen=True)
class CancelResult:
    """Outcome of CancelTask."""

    #: True when the task is cancelled (by this call or an earlier one); False when it had
    #: already completed or failed (`error` says so).
    success: bool
    #: The task's status after the call: cancelled, or the terminal status it already had.
    status: str
    error: str = ""


@dataclass(frozen=True)
class TaskSummary:
    """One task in a ListTasks page."""

    task_id: str
    status: str
    task_class: str
    priority: int
    workflow_id: str
    attempts: int
    submitted_at: int
    completed_at: int
    error: str


@dataclass(frozen=True)
class TaskPage:
    """One page of ListTasks, newest first."""

    tasks: list[TaskSummary]
    #: Pass as `page_token` for the next page; empty when there is none.
    next_page_token: str = ""


@dataclass(frozen=True)
class WorkflowCreated:
    """Outcome of CreateWorkflow."""

    success: bool
    workflow_id: str
    #: The version the spec is stored as: the same spec again keeps its version.
    version: int
    error: str = ""


@dataclass(frozen=True)
class WorkflowSummary:
    """The latest version of one workflow (ListWorkflows)."""

    workflow_id: str
    name: str
    description: str
    version: int
    total_steps: int
    created_at: int


@dataclass(frozen=True)
class RunStarted:
    """Outcome of StartWorkflowRun."""

    success: bool
    run_id: str
    #: False when the idempotency key returned a run started before.
    created: bool
    error: str = ""
    #: The key the run was started with: the caller's, or the one the client made up
    #: (``key-<32 hex digits>``). Starting again with it returns the same run.
    idempotency_key: str = ""


@dataclass(frozen=True)
class WorkflowStatus:
    """A workflow run's progress (StreamWorkflowStatus): its state first, then each change."""

    run_id: str
    #: pending, running, completed or failed.
    status: str
    current_step: str
    steps_completed: int
    total_steps: int
    #: The run's output once it ended: ``LEAF_STEP.KEY`` -> value for each completed leaf step.
    output: dict[str, str]
    error: str

    @property
    def decoded_output(self) -> dict[str, object]:
        """`output` with JSON values decoded."""
        return decode_payload(self.output)

    @property
    def finished(self) -> bool:
        """True once the run is completed or failed."""
        return self.status in TERMINAL_STATUSES


@dataclass(frozen=True)
class Metrics:
    """A snapshot of the orchestrator's numeric metrics."""

    metrics: dict[str, float]
    #: When the snapshot was taken.
    timestamp: int


@dataclass(frozen=True)
class SystemEvent:
    """One event: task_submitted, task_started, task_completed, workflow_started, ...

    `data` carries the event's details; agent-infra adds ``data["seq"]``, the event's position
    in the orchestrator's log.
    """

    event_type: str
    #: The task, workflow or run the event is about.
    resource_id: str
    data: dict[str, str] = field(default_factory=dict)
    timestamp: int = 0


@dataclass(frozen=True)
class HealthStatus:
    """The orchestrator's Health answer."""

    #: True when the orchestrator and every dependency (its store, each env-manager) serve.
    healthy: bool
    version: str
    #: Dependency -> "SERVING" or what is wrong with it.
    services: dict[str, str] = field(default_factory=dict)
