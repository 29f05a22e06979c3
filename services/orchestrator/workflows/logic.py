"""What a workflow run does next, from its steps' states alone (pure: no store, no clock).

The rules:
  * a pending step is ready once every parent completed;
  * a failed step's descendants that have not started are skipped (so is anything below a skipped
    step); steps that are not descendants carry on: running siblings finish, and independent
    branches keep starting (unless fail_fast, which skips every step not yet started);
  * the run is running while any step is pending, ready or running, and once every step is
    terminal it is completed if all completed, failed otherwise.

The engine calls `next_actions` after each change (run start, a step's task ending, a restart) and
applies the result; applying it twice is harmless, so a crash between the two is too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from .spec import WorkflowSpec


class StepStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"

    @property
    def terminal(self) -> bool:
        return self in (StepStatus.COMPLETED, StepStatus.FAILED, StepStatus.SKIPPED)


class RunStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        return self in (RunStatus.COMPLETED, RunStatus.FAILED)


@dataclass(frozen=True)
class Actions:
    ready: list[str]  # pending steps to start now, in topological order
    skip: list[str]  # pending steps to mark skipped, in topological order
    # running while anything is pending or running (after applying ready and skip); else the
    # terminal status the run ends in.
    run_status: RunStatus
    # For each skipped step: the failed (or already skipped) step that blocks it.
    skip_causes: dict[str, str] = field(default_factory=dict)


def next_actions(spec: WorkflowSpec, step_states: Mapping[str, str], *,
                 fail_fast: bool = False) -> Actions:
    """Steps missing from step_states are pending; an unknown id or status is a ValueError."""
    states = _states(spec, step_states)
    order = spec.order()
    causes: dict[str, str] = {}
    first_failure = next((s for s in order if states[s] == StepStatus.FAILED), None)
    for step_id in order:  # parents before children: a cause propagates down in one pass
        if states[step_id] != StepStatus.PENDING:
            continue
        blocker = next((parent for parent in spec.parents(step_id)
                        if states[parent] in (StepStatus.FAILED, StepStatus.SKIPPED)), None)
        if blocker is not None:
            causes[step_id] = causes.get(blocker, blocker)
        elif fail_fast and first_failure is not None:
            causes[step_id] = first_failure
        if step_id in causes:
            states[step_id] = StepStatus.SKIPPED
    ready = [step_id for step_id in order
             if states[step_id] == StepStatus.PENDING
             and all(states[parent] == StepStatus.COMPLETED for parent in spec.parents(step_id))]
    skip = [step_id for step_id in order if step_id in causes]
    if all(state.terminal for state in states.values()):
        done = all(state == StepStatus.COMPLETED for state in states.values())
        run_status = RunStatus.COMPLETED if done else RunStatus.FAILED
    else:
        run_status = RunStatus.RUNNING
    return Actions(ready, skip, run_status, causes)


def _states(spec: WorkflowSpec, step_states: Mapping[str, str]) -> dict[str, StepStatus]:
    unknown = sorted(set(step_states) - set(spec.ids))
    if unknown:
        raise ValueError(f"states for steps not in the spec: {', '.join(unknown)}")
    states: dict[str, StepStatus] = {}
    for step_id in spec.ids:
        value = step_states.get(step_id, StepStatus.PENDING)
        try:
            states[step_id] = StepStatus(value)
        except ValueError:
            raise ValueError(f"step '{step_id}' has unknown status {value!r}") from None
    return states
