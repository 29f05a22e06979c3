"""What OrchestratorClient returns: frozen dataclasses with the wire API's field names.

Field meanings are those of orchestrator.v1 (WIRE-API.md); timestamps are unix seconds (0 when
not reached yet), durations in milliseconds. Maps of strings stay as the wire has them
(``result``, ``output``, ``data``); the ``decoded_*`` properties give the values back as Python
values where they are JSON (see `client._payload.decode_value`).

Read-only mappings as well: the original stack's OrchestratorClient returned plain dicts from
``submit_task``, ``get_task_status``, ``stream_task_results``, ``stream_events``,
``get_metrics`` and ``health_check``. `SubmitResult`, `TaskStatus`, `TaskResult`, `SystemEvent`
and `HealthStatus` are also mappings of their fields (``result["task_id"]``, ``.get()``,
``dict(result)``, ``== {...}``; task states also have the original's ``"result_payload"`` key,
the same map as ``"result"``), and `Metrics` is a mapping of metric name to value, as the
original's ``get_metrics`` dict was; attributes work as before.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

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


class _FieldMapping(Mapping[str, Any]):
    """A dataclass that is also a read-only mapping of its fields (the original's dict shape).

    Equal to another instance of the same class with the same fields, and to a mapping with
    the same keys and values. `_aliases` adds keys that read another field.
    """

    __slots__ = ()
    _aliases: dict[str, str] = {}

    def _keys(self) -> list[str]:
        return [f.name for f in fields(self)] + list(self._aliases)  # type: ignore[arg-type]

    def __getitem__(self, key: str) -> Any:
        if key in self._aliases:
            key = self._aliases[key]
        if not isinstance(key, str) or key not in {f.name for f in fields(self)}:  # type: ignore[arg-type]
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())

    def __eq__(self, other: object) -> bool:
        if type(other) is type(self):
            return all(getattr(self, f.name) == getattr(other, f.name)
                       for f in fields(self))  # type: ignore[arg-type]
        if isinstance(other, Mapping):
            return dict(self.items()) == dict(other.items())
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True, eq=False)
class SubmitResult(_FieldMapping):
    """Outcome of SubmitTask. An error the server reports raises instead (`InvalidArgument`...)."""

    success: bool
    #: The task's id: the caller's, or the one the client made up (``task-<32 hex digits>``).
    task_id: str
    error: str = ""


@dataclass(frozen=True, eq=False)
class _TaskFacts(_FieldMapping):
    """What GetTaskStatus and each item of StreamTaskResults say about a task."""

    _aliases = {"result_payload": "result"}  # the original's get_task_status key

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


@dataclass(frozen=True, eq=False)
class TaskStatus(_TaskFacts):
    """A task's current state (GetTaskStatus)."""

    @property
    def succeeded(self) -> bool:
        return self.status == "completed"


@dataclass(frozen=True, eq=False)
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


@dataclass(frozen=True, eq=False)
class Metrics(Mapping[str, float]):
    """A snapshot of the orchestrator's numeric metrics; also a mapping of metric name to
    value (``m["tasks_running"]``, ``dict(m)``), as the original's ``get_metrics`` dict was.
    Equal to another snapshot with the same fields, and to a dict of the same metrics."""

    metrics: dict[str, float]
    #: When the snapshot was taken.
    timestamp: int

    def __getitem__(self, name: str) -> float:
        return self.metrics[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.metrics)

    def __len__(self) -> int:
        return len(self.metrics)

    def __eq__(self, other: object) -> bool:
        if type(other) is type(self):
            return (self.metrics, self.timestamp) == (other.metrics, other.timestamp)
        if isinstance(other, Mapping):
            return self.metrics == dict(other.items())
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True, eq=False)
class SystemEvent(_FieldMapping):
    """One event: task_submitted, task_started, task_completed, workflow_started, ...

    `data` carries the event's details; agent-infra adds ``data["seq"]``, the event's position
    in the orchestrator's log.
    """

    event_type: str
    #: The task, workflow or run the event is about.
    resource_id: str
    data: dict[str, str] = field(default_factory=dict)
    timestamp: int = 0


@dataclass(frozen=True, eq=False)
class HealthStatus(_FieldMapping):
    """The orchestrator's Health answer."""

    #: True when the orchestrator and every dependency (its store, each env-manager) serve.
    healthy: bool
    version: str
    #: Dependency -> "SERVING" or what is wrong with it.
    services: dict[str, str] = field(default_factory=dict)
