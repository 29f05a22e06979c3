"""What runs a task: the contract between the scheduler and an executor.

An executor either returns an outcome (the task ran: success or its own failure), raises
TransientFailure (nothing can be said yet: try the same execution again later), or raises a
DomainError (the task can never run as given: it fails with that message).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

# Payload keys the orchestrator itself reads; they are not passed on to the executor.
CONTROL_KEYS = frozenset({"timeout_seconds", "max_attempts", "retry_on_failure"})


@dataclass(frozen=True)
class Execution:
    execution_id: str
    task_class: str
    payload: Mapping[str, str]
    timeout_seconds: int


@dataclass(frozen=True)
class ExecutionOutcome:
    success: bool
    result: dict[str, str]
    error: str


class TransientFailure(Exception):
    """The executor could not be reached, or did not answer in time: retry the same execution."""


class Executor(Protocol):
    def supports(self, task_class: str) -> str:
        """'' when tasks of the class can run here, else why not."""

    async def execute(self, execution: Execution) -> ExecutionOutcome: ...

    async def cancel(self, execution_id: str, task_class: str) -> None:
        """Stop a running execution on its backend (best effort)."""

    async def wait_until_available(self, task_class: str) -> None:
        """Return when dispatching a task of the class has a chance (e.g. a backend answers)."""

    async def health(self) -> dict[str, str]:
        """Each backend's state, for the Health RPC ("SERVING" or why not)."""

    async def close(self) -> None: ...
