"""next_actions: what a run does next from its steps' states."""

from __future__ import annotations

import json
from typing import Any

import pytest
from agent_infra.orchestrator.workflows.logic import (
    Actions,
    RunStatus,
    StepStatus,
    next_actions,
)
from agent_infra.orchestrator.workflows.spec import WorkflowSpec, parse_spec

RUNNING, COMPLETED, FAILED, SKIPPED, PENDING = (
    "running", "completed", "failed", "skipped", "pending")


def spec_of(**deps: list[str]) -> WorkflowSpec:
    steps: list[dict[str, Any]] = [{"id": name, "depends_on": parents}
                                   for name, parents in deps.items()]
    return parse_spec(json.dumps({"steps": steps}), None)


# a -> (b, c) -> d, plus an independent branch x -> y
DIAMOND = spec_of(a=[], b=["a"], c=["a"], d=["b", "c"])
TWO_BRANCHES = spec_of(a=[], b=["a"], c=["a"], d=["b", "c"], x=[], y=["x"])


def test_start_readies_roots() -> None:
    assert next_actions(DIAMOND, {}) == Actions(["a"], [], RunStatus.RUNNING, {})
    assert next_actions(TWO_BRANCHES, {}).ready == ["a", "x"]


def test_diamond_fans_out_then_joins() -> None:
    assert next_actions(DIAMOND, {"a": RUNNING}).ready == []
    fan_out = next_actions(DIAMOND, {"a": COMPLETED})
    assert fan_out.ready == ["b", "c"] and fan_out.run_status == RunStatus.RUNNING
    # The join waits for both parents.
    assert next_actions(DIAMOND, {"a": COMPLETED, "b": COMPLETED, "c": RUNNING}).ready == []
    join = next_actions(DIAMOND, {"a": COMPLETED, "b": COMPLETED, "c": COMPLETED})
    assert join.ready == ["d"] and join.skip == []


def test_running_steps_are_not_ready_again() -> None:
    actions = next_actions(DIAMOND, {"a": COMPLETED, "b": RUNNING})
    assert actions.ready == ["c"]


def test_all_done_completes_the_run() -> None:
    states = dict.fromkeys("abcd", COMPLETED)
    assert next_actions(DIAMOND, states) == Actions([], [], RunStatus.COMPLETED, {})


def test_failing_branch_skips_descendants_and_lets_running_sibling_finish() -> None:
    states = {"a": COMPLETED, "b": FAILED, "c": RUNNING}
    actions = next_actions(DIAMOND, states)
    assert actions.ready == []
    assert actions.skip == ["d"]
    assert actions.skip_causes == {"d": "b"}
    assert actions.run_status == RunStatus.RUNNING  # c is still running
    # c finishes; d was skipped: everything is terminal and the run fails.
    done = next_actions(DIAMOND, {**states, "c": COMPLETED, "d": SKIPPED})
    assert done == Actions([], [], RunStatus.FAILED, {})


def test_failure_with_nothing_running_fails_at_once() -> None:
    actions = next_actions(DIAMOND, {"a": FAILED})
    assert actions.skip == ["b", "c", "d"]
    assert actions.skip_causes == {"b": "a", "c": "a", "d": "a"}
    assert actions.ready == []
    assert actions.run_status == RunStatus.FAILED


def test_independent_branch_carries_on_after_a_failure() -> None:
    states = {"a": FAILED, "x": COMPLETED}
    actions = next_actions(TWO_BRANCHES, states)
    assert actions.skip == ["b", "c", "d"]
    assert actions.ready == ["y"]
    assert actions.run_status == RunStatus.RUNNING
    final = next_actions(TWO_BRANCHES, {**states, "b": SKIPPED, "c": SKIPPED, "d": SKIPPED,
                                        "y": COMPLETED})
    assert final.run_status == RunStatus.FAILED


def test_fail_fast_skips_everything_not_started() -> None:
    states = {"a": FAILED, "x": RUNNING}
    actions = next_actions(TWO_BRANCHES, states, fail_fast=True)
    assert actions.ready == []
    assert actions.skip == ["b", "c", "d", "y"]
    assert actions.skip_causes == {"b": "a", "c": "a", "d": "a", "y": "a"}
    assert actions.run_status == RunStatus.RUNNING  # x still running
    # fail_fast changes nothing while nothing failed
    assert next_actions(TWO_BRANCHES, {}, fail_fast=True).ready == ["a", "x"]


def test_below_an_already_skipped_step_is_skipped_too() -> None:
    chain = spec_of(a=[], b=["a"], c=["b"])
    actions = next_actions(chain, {"a": FAILED, "b": SKIPPED})
    assert actions.skip == ["c"] and actions.skip_causes == {"c": "b"}
    assert actions.run_status == RunStatus.FAILED


def test_cause_is_the_failed_ancestor_deep_down() -> None:
    chain = spec_of(a=[], b=["a"], c=["b"], d=["c"])
    actions = next_actions(chain, {"a": FAILED})
    assert actions.skip_causes == {"b": "a", "c": "a", "d": "a"}


def test_two_failures_both_block() -> None:
    actions = next_actions(DIAMOND, {"a": COMPLETED, "b": FAILED, "c": FAILED})
    assert actions.skip == ["d"] and actions.skip_causes["d"] == "b"
    assert actions.run_status == RunStatus.FAILED


def test_applying_twice_is_harmless() -> None:
    first = next_actions(DIAMOND, {"a": COMPLETED, "b": FAILED, "c": RUNNING})
    states = {"a": COMPLETED, "b": FAILED, "c": RUNNING,
              **dict.fromkeys(first.skip, SKIPPED)}
    again = next_actions(DIAMOND, states)
    assert again.skip == [] and again.ready == []


def test_single_step() -> None:
    one = spec_of(only=[])
    assert next_actions(one, {}).ready == ["only"]
    assert next_actions(one, {"only": FAILED}).run_status == RunStatus.FAILED
    assert next_actions(one, {"only": COMPLETED}).run_status == RunStatus.COMPLETED


def test_statuses_may_be_enum_members() -> None:
    assert next_actions(DIAMOND, {"a": StepStatus.COMPLETED}).ready == ["b", "c"]
    assert next_actions(DIAMOND, {"a": PENDING}).ready == ["a"]


def test_bad_states_are_programming_errors() -> None:
    with pytest.raises(ValueError, match="not in the spec: zz"):
        next_actions(DIAMOND, {"zz": COMPLETED})
    with pytest.raises(ValueError, match="step 'a' has unknown status 'done'"):
        next_actions(DIAMOND, {"a": "done"})


def test_terminal_properties() -> None:
    assert {s for s in StepStatus if s.terminal} == {
        StepStatus.COMPLETED, StepStatus.FAILED, StepStatus.SKIPPED}
    assert {s for s in RunStatus if s.terminal} == {RunStatus.COMPLETED, RunStatus.FAILED}
