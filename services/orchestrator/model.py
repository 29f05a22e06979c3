"""The orchestrator's records: tasks and events, as the store keeps them."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

import orjson


class TaskState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({TaskState.COMPLETED, TaskState.FAILED, TaskState.CANCELLED})

TASK_ID_PATTERN = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
# The class of a task (or workflow step) submitted without one.
DEFAULT_CLASS = "cpu_short"


@dataclass(frozen=True)
class TaskRequest:
    """What a caller submits; two requests with the same id must be equal to be idempotent."""

    id: str
    task_class: str
    payload: Mapping[str, str]
    priority: int = 0
    workflow_id: str = ""
    timeout_seconds: int = 0  # 0: the payload's or the class's default
    max_attempts: int = 0  # 0: the class's default

    def content_hash(self) -> str:
        return hashlib.sha256(orjson.dumps(self._canonical())).hexdigest()

    def has_content(self, stored_hash: str) -> bool:
        """Whether a stored task whose content hash is `stored_hash` has this request's content.

        Tasks stored by earlier releases were hashed over the standard library's encoding, which
        differs from orjson's for non-ASCII text: either hash is this request's.
        """
        if stored_hash == self.content_hash():
            return True
        legacy = json.dumps(self._canonical(), separators=(",", ":"))
        return stored_hash == hashlib.sha256(legacy.encode()).hexdigest()

    def _canonical(self) -> list[object]:
        return [self.task_class, dict(sorted(self.payload.items())), self.priority,
                self.workflow_id, self.timeout_seconds, self.max_attempts]


@dataclass(slots=True)
class Task:
    id: str
    task_class: str
    payload: dict[str, str]
    priority: int
    workflow_id: str
    timeout_seconds: int
    max_attempts: int
    content_hash: str
    seq: int  # submit order, for FIFO within a priority
    submitted_at: float
    status: TaskState = TaskState.PENDING
    attempts: int = 0  # dispatches started, bounded by max_attempts
    execution: int = 0  # bumped when the task itself failed and is run afresh
    result: dict[str, str] = field(default_factory=dict)
    error: str = ""
    started_at: float = 0.0
    finished_at: float = 0.0
    run_id: str = ""  # set when the task is a workflow step
    step_id: str = ""

    def snapshot(self) -> Task:
        """A copy to hand out while this one keeps changing (payload and result are shared:
        they are replaced, never changed in place). dataclasses.replace does the same, slower:
        it runs once per state change of every task."""
        return Task(self.id, self.task_class, self.payload, self.priority, self.workflow_id,
                    self.timeout_seconds, self.max_attempts, self.content_hash, self.seq,
                    self.submitted_at, self.status, self.attempts, self.execution, self.result,
                    self.error, self.started_at, self.finished_at, self.run_id, self.step_id)

    @property
    def execution_id(self) -> str:
        """The id env-manager runs this execution under: stable across dispatch retries and
        orchestrator restarts, so a retried dispatch attaches instead of running twice."""
        if self.execution == 0:
            return self.id
        suffix = f":r{self.execution}"
        if len(self.id) + len(suffix) <= 128:
            return self.id + suffix
        digest = hashlib.sha256(self.id.encode()).hexdigest()[:8]
        return f"{self.id[:128 - len(suffix) - 9]}.{digest}{suffix}"

    @property
    def duration_ms(self) -> float:
        if not self.started_at or not self.finished_at:
            return 0.0
        return (self.finished_at - self.started_at) * 1000


@dataclass(frozen=True)
class Event:
    seq: int
    event_type: str
    resource_id: str
    data: dict[str, str]
    timestamp: float
