"""What the console's workflow pages show (console/workflows_view.py), from records alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from agent_infra.orchestrator.console import workflows_view
from agent_infra.orchestrator.workflows.logic import RunStatus, StepStatus
from agent_infra.orchestrator.workflows.records import Run, RunStep, Workflow
from agent_infra.orchestrator.workflows.spec import parse_document, parse_spec
from agent_infra.runtime.errors import InvalidArgument

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "composer_workflow.json"
CLASSES = {"cpu_short", "gpu", "gpu_slurm"}


def composer_workflow() -> Workflow:
    header, spec = parse_document(FIXTURE.read_text(), CLASSES)
    return Workflow("wf-1", 1, header["name"], "", spec, 100.0)


def step(step_id: str, status: StepStatus, started: float = 0, finished: float = 0,
         result: dict[str, str] | None = None, error: str = "") -> RunStep:
    return RunStep("run-1", step_id, f"run-1-{step_id}" if started else "", status,
                   result or {}, error, started, finished)


def test_step_rows_in_dependency_order_with_timings_and_results() -> None:
    workflow = composer_workflow()
    steps = {
        "answer": step("answer", StepStatus.COMPLETED, 10.0, 12.5, {"stdout": "42"}),
        "check": step("check", StepStatus.FAILED, 12.6, 13.0, {"stdout": "no"}, "no signal"),
        "score": step("score", StepStatus.SKIPPED),
        "ship": step("ship", StepStatus.SKIPPED),
        "lint": step("lint", StepStatus.RUNNING, 10.0),
        "note": step("note", StepStatus.PENDING),
    }
    run = Run("run-1", "wf-1", 1, "", {}, RunStatus.RUNNING, "", {}, 9.0, 0.0, steps)
    rows = {row.id: row for row in workflows_view.step_rows(run, workflow, {"answer": 2})}
    assert [row.id for row in workflows_view.step_rows(run, workflow, {})] == list(
        workflow.spec.order())
    answer = rows["answer"]
    assert (answer.name, answer.kind, answer.task_class, answer.status) == (
        "Answer the question", "signature", "cpu_short", "completed")
    assert answer.seconds == pytest.approx(2.5) and answer.attempts == 2
    assert json.loads(answer.result.text) == {"stdout": "42"} and answer.result.cut == 0
    assert (rows["check"].status, rows["check"].error) == ("failed", "no signal")
    assert rows["lint"].seconds is None and rows["score"].attempts == 0
    assert workflows_view.run_state(run)["steps"]["lint"] == "running"


def test_an_inline_node_shows_its_config_as_result() -> None:
    workflow = composer_workflow()
    steps = {step_id: step(step_id, StepStatus.COMPLETED, 1.0, 2.0)
             for step_id in workflow.spec.ids}
    run = Run("run-1", "wf-1", 1, "", {}, RunStatus.COMPLETED, "", {}, 0.5, 2.0, steps)
    rows = {row.id: row for row in workflows_view.step_rows(run, workflow, {})}
    assert json.loads(rows["note"].result.text) == {"message": "linted", "level": 2}
    assert rows["note"].attempts == 1


def test_long_results_are_cut_saying_how_much() -> None:
    shown = workflows_view.shown_json({"stdout": "x" * 50_000})
    assert len(shown.text) == workflows_view.MAX_SHOWN_CHARS and shown.cut > 30_000


def test_run_form_uses_the_api_checks() -> None:
    assert workflows_view.run_form("", " key ") == ("key", {}, None, {})
    key, flat, original, _ = workflows_view.run_form('{"q": "2+2?", "n": [4]}', "")
    assert (key, flat, original) == ("", {"q": "2+2?", "n": "[4]"}, {"q": "2+2?", "n": [4]})
    with pytest.raises(InvalidArgument, match="input must be a JSON object"):
        workflows_view.run_form("[1]", "")
    with pytest.raises(InvalidArgument, match="input"):
        workflows_view.run_form("{nope", "")


def test_the_example_spec_is_valid() -> None:
    header, spec = parse_document(workflows_view.EXAMPLE_SPEC, CLASSES)
    assert header["name"] == "hello" and spec.ids == ("after", "greet")
    assert parse_spec(spec.canonical_json(), None) == spec
