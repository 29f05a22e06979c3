"""What the workflow pages show, built from the domain's records (no HTTP, no templates)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from agent_infra.runtime.errors import InvalidArgument, shorten
from agent_infra.runtime.parsing import load_json

from ..http_workflows import run_request, workflow_json
from ..workflows.logic import StepStatus
from ..workflows.records import Run, Workflow

# A step's result (or the spec) shown on a page beyond this is cut, saying so.
MAX_SHOWN_CHARS = 20_000
RUNS_SHOWN = 20
STEP_EVENT_TYPES = ("workflow_started", "workflow_step_started", "workflow_step_completed",
                    "workflow_step_failed", "workflow_step_skipped", "workflow_completed",
                    "workflow_failed")
EXAMPLE_SPEC = json.dumps({
    "name": "hello", "description": "two steps, one after the other",
    "steps": [
        {"id": "greet", "class": "cpu_short",
         "payload": {"command": ["echo", "hello {{ input.who }}"]}},
        {"id": "after", "class": "cpu_short", "depends_on": ["greet"],
         "payload": {"command": ["echo", "{{ steps.greet.result.stdout }}"]}}]}, indent=2)


@dataclass(frozen=True)
class Shown:
    text: str
    cut: int  # characters left out


@dataclass(frozen=True)
class StepRow:
    id: str
    name: str
    kind: str
    task_class: str
    status: str  # ours: pending, running, completed, failed, skipped
    task_id: str
    started_at: float
    finished_at: float
    seconds: float | None  # from start to finish, when both happened
    attempts: int
    result: Shown
    error: str


def shown_json(value: Any) -> Shown:
    text = json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)
    if len(text) <= MAX_SHOWN_CHARS:
        return Shown(text, 0)
    return Shown(text[:MAX_SHOWN_CHARS], len(text) - MAX_SHOWN_CHARS)


def spec_text(workflow: Workflow, first_created: float) -> Shown:
    """The workflow as GET /workflows/{id} answers it."""
    return shown_json(workflow_json(workflow, first_created))


def node_names(workflow: Workflow) -> dict[str, str]:
    graph = workflow.spec.graph
    if graph is None:
        return {}
    return {str(node.get("id")): str(node.get("name") or "")
            for node in graph.document.get("nodes", []) if isinstance(node, dict)}


def step_rows(run: Run, workflow: Workflow, attempts: dict[str, int]) -> list[StepRow]:
    """The run's steps in dependency order, with timings, attempts and results."""
    names = node_names(workflow)
    rows = []
    for step_id in workflow.spec.order():
        spec = workflow.spec.step(step_id)
        step = run.steps[step_id]
        result: Any = step.result
        tries = attempts.get(step_id, 0)
        if not spec.runs_task and step.status.terminal and step.status != StepStatus.SKIPPED:
            tries = 1
            if step.status == StepStatus.COMPLETED:
                result = spec.config_object
        seconds = (step.finished_at - step.started_at
                   if step.started_at and step.finished_at else None)
        rows.append(StepRow(step_id, names.get(step_id) or step_id, spec.kind, spec.task_class,
                            step.status.value, step.task_id, step.started_at, step.finished_at,
                            seconds, tries, shown_json(result), step.error))
    return rows


def run_state(run: Run) -> dict[str, Any]:
    """What the pages' script recolours from: the run's and each step's status (ours)."""
    return {"run_id": run.run_id, "status": run.status.value, "error": run.error,
            "steps": {step_id: step.status.value for step_id, step in run.steps.items()}}


def run_form(input_text: str, idempotency_key: str) -> tuple[str, dict[str, str], Any,
                                                             dict[str, Any]]:
    """The start-run form as POST /workflows/{id}/runs's body would be: the same checks."""
    text = input_text.strip()
    try:
        run_input = load_json(text, "input") if text else {}
    except ValueError as exc:
        raise InvalidArgument(shorten(str(exc), 500)) from None
    return run_request({"input": run_input, "idempotency_key": idempotency_key.strip()})
