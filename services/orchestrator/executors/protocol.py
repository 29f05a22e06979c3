"""What runs a task: the contract between the scheduler and an executor.

An executor either returns an outcome (the task ran: success or its own failure), raises
TransientFailure (nothing can be said yet: try the same execution again later), or raises a
DomainError (the task can never run as given: it fails with that message).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
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
    attempt: int = 0  # the scheduler's attempt number, 1 first (0: not known)


@dataclass(frozen=True)
class ExecutionOutcome:
    success: bool
    result: dict[str, str]
    error: str


class TransientFailure(Exception):
    """The executor could not be reached, or did not answer in time: retry the same execution."""


class Executor(Protocol):
    """Optionally also `async check_payload(task_class, payload)`: raise InvalidArgument at
    submit for a payload the backend is known to refuse (the scheduler calls it when present)."""

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


async def wait_until_reachable(reachable: asyncio.Event, answers: Callable[[], Awaitable[bool]],
                               interval: Callable[[], float]) -> bool:
    """For an executor's wait_until_available: while `reachable` is clear, ask `answers()` every
    `interval()` s (or sooner, when something else sets it) and set it once they say yes. True
    when this call found the backend back (for the caller to log)."""
    while not reachable.is_set():
        if await answers():
            reachable.set()
            return True
        try:
            await asyncio.wait_for(reachable.wait(), interval())
        except TimeoutError:
            continue
    return False
