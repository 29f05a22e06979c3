"""The composer's typed graph read into the one step model (workflows/typed.py, nodes.py)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from agent_infra.orchestrator.workflows import nodes
from agent_infra.orchestrator.workflows.spec import parse_document, parse_spec
from agent_infra.runtime.errors import FailedPrecondition, InvalidArgument

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "composer_workflow.json"
CLASSES = {"cpu_short", "gpu", "gpu_slurm"}


def composer() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(FIXTURE.read_text())
    return document


def test_the_composer_fixture_is_one_step_model() -> None:
    header, spec = parse_document(json.dumps(composer()), CLASSES)
    assert header["name"].startswith("composer") and header["created_at"]
    kinds = {step.id: (step.kind, step.task_class, step.depends_on) for step in spec.steps}
    assert kinds == {
        "answer": ("signature", "cpu_short", ()),
        "check": ("verifier", "cpu_short", ("answer",)),
        "score": ("reward", "", ("check",)),
        "ship": ("deployment", "", ("check",)),
        "lint": ("verifier", "cpu_short", ()),
        "note": ("custom", "", ("lint",)),
    }
    assert spec.step("check").timeout_seconds == 60
    assert set(spec.roots()) == {"answer", "lint"}
    # What the composer sent beyond the steps is kept as it was.
    kept = spec.graph.document if spec.graph else {}
    assert kept["tags"] == ["composer", "fixture"] and kept["tenant"] == "acme"
    assert kept["version"] == "1.2.0"
    assert kept["nodes"][0]["position"] == {"x": 100, "y": 40}
    assert kept["edges"][2] == {"id": "e3", "source": "check", "target": "ship",
                                "kind": "control", "label": "on pass"}
    # The stored form reads back to the same spec; the header is not part of it.
    again = parse_spec(spec.canonical_json(), None)
    assert again == spec and again.canonical_json() == spec.canonical_json()
    assert "created_at" not in spec.canonical_json()


@pytest.mark.parametrize("domain, expected", [("gpu", "gpu"), ("CUDA", "gpu"),
                                              ("accelerated", "gpu"), ("cpu", "cpu_short"),
                                              ("", "cpu_short")])
def test_signature_class_follows_execution_domain(domain: str, expected: str) -> None:
    document = {"nodes": [{"id": "s", "type": "signature",
                           "signature": {"prompt": "q -> a", "execution_domain": domain}}]}
    assert parse_spec(json.dumps(document), CLASSES).step("s").task_class == expected


def test_training_runs_on_slurm() -> None:
    document = {"nodes": [{"id": "t", "type": "training",
                           "training": {"method": "grpo", "skill": "qa"}}]}
    assert parse_spec(json.dumps(document), CLASSES).step("t").task_class == "gpu_slurm"


def broken(change: Any) -> dict[str, Any]:
    document = composer()
    change(document)
    return document


def _set(path: list[Any], value: Any) -> Any:
    def apply(document: dict[str, Any]) -> None:
        target = document
        for key in path[:-1]:
            target = target[key]
        if value is KeyError:
            del target[path[-1]]
        elif isinstance(target, list) and path[-1] == len(target):
            target.append(value)
        else:
            target[path[-1]] = value
    return apply


@pytest.mark.parametrize("change, message", [
    (_set(["nodes", 0, "signature", "prompt"], KeyError), "node 'answer'.signature.prompt is "
                                                          "required"),
    (_set(["nodes", 1, "verifier", "command"], ""), "node 'check'.verifier.command is required"),
    (_set(["nodes", 1, "verifier", "weight"], -1), "node 'check'.verifier.weight must be 0 or"),
    (_set(["nodes", 2, "reward", "metric"], KeyError), "node 'score'.reward.metric is required"),
    (_set(["nodes", 3, "deployment", "channel"], KeyError), "deployment.channel is required"),
    (_set(["nodes", 5, "custom"], {}), "node 'note'.custom must be a non-empty object"),
    (_set(["nodes", 0, "signature", "max_tokens"], "many"), "max_tokens must be a whole number"),
    (_set(["nodes", 0, "type"], "oracle"), "node 'answer'.type must be one of signature"),
    (_set(["nodes", 6], {"id": "answer", "type": "custom", "custom": {"a": 1}}),
     "duplicate step ids: answer"),
    (_set(["nodes", 6], {"id": "a b", "type": "custom", "custom": {"a": 1}}),
     "nodes[6].id 'a b' is invalid"),
    (_set(["nodes", 0, "colour"], "red"), "node 'answer' has unknown keys: colour"),
    (_set(["edges", 1, "id"], "e1"), "edges[1].id: duplicate edge id 'e1'"),
    (_set(["edges", 0, "target"], "nowhere"), "edge 'e1'.target names unknown node 'nowhere'"),
    (_set(["edges", 0, "source"], KeyError), "edge 'e1'.source is required"),
    (_set(["edges", 0, "kind"], "magic"), "edge 'e1'.kind must be data, control or reward"),
    (_set(["nodes"], []), "nodes must be a non-empty list"),
    (_set(["tags"], "x"), "tags must be a list of strings"),
    (_set(["owner"], "x"), "workflow has unknown keys: owner"),
])
def test_invalid_graphs_name_the_field(change: Any, message: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_document(json.dumps(broken(change)), CLASSES)
    assert message in str(caught.value)


def test_a_cycle_is_refused() -> None:
    document = broken(lambda d: d["edges"].append({"id": "back", "source": "score",
                                                   "target": "answer"}))
    with pytest.raises(InvalidArgument, match="dependency cycle"):
        parse_document(json.dumps(document), CLASSES)


def test_a_class_not_configured_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="runs in class 'gpu_slurm', which is not"):
        parse_spec(json.dumps({"nodes": [{"id": "t", "type": "training", "training": {
            "method": "m", "skill": "s"}}]}), {"cpu_short"})


def test_node_payloads_and_task_ids() -> None:
    _, spec = parse_document(json.dumps(composer()), CLASSES)
    answer = spec.step("answer")
    context = nodes.context("wf", "name", "run-1", answer, {})
    payload = nodes.payload(answer, workflow_id="wf", run_id="run-1", run_input={"q": [1]},
                            workflow_context=context)
    assert payload["prompt"] == "question -> answer" and payload["tools"] == '["search"]'
    assert (payload["workflow_id"], payload["workflow_run_id"], payload["node_id"],
            payload["step_kind"]) == ("wf", "run-1", "answer", "signature")
    assert json.loads(payload["input"]) == {"q": [1]}
    assert json.loads(payload["workflow_context"])["node_id"] == "answer"
    assert "command" not in payload
    check = spec.step("check")
    verifier = nodes.payload(check, workflow_id="wf", run_id="run-1", run_input={},
                             workflow_context=nodes.context("wf", "n", "run-1", check, {}))
    assert set(verifier) == {"command", "env", "stdin"}
    assert json.loads(verifier["env"])["NODE_ID"] == "check"
    assert nodes.task_id("run-1", answer) == "run-1-answer"
    steps_form = parse_spec(json.dumps({"steps": [{"id": "a"}]}), CLASSES).step("a")
    assert nodes.task_id("run-1", steps_form) == "run-1:a"
    assert nodes.inline_result(spec.step("note")) == {"message": "linted", "level": "2"}


def test_verifier_success_signal_and_training_command() -> None:
    _, spec = parse_document(json.dumps(composer()), CLASSES)
    assert nodes.outcome_error(spec.step("check"), {"stdout": "VERIFIED\n"}) == ""
    assert "success_signal 'VERIFIED' not found" in nodes.outcome_error(
        spec.step("check"), {"stdout": "nope"})
    assert nodes.outcome_error(spec.step("lint"), {"stdout": ""}) == ""
    training = parse_spec(json.dumps({"nodes": [{"id": "t", "type": "training", "training": {
        "method": "m", "skill": "s"}}]}), CLASSES).step("t")
    with pytest.raises(FailedPrecondition, match="training_command"):
        nodes.payload(training, workflow_id="w", run_id="r", run_input={},
                      workflow_context={})
    job = nodes.payload(training, workflow_id="w", run_id="r", run_input={},
                        workflow_context={}, training_command=["train", "--fast"])
    assert json.loads(job["command"]) == ["train", "--fast"]
    assert json.loads(job["env"])["TRAINING_METHOD"] == "m"


def test_the_steps_form_is_unchanged_by_header_keys() -> None:
    header, spec = parse_document(json.dumps({"id": "w", "name": "n", "steps": [{"id": "a"}]}),
                                  CLASSES)
    assert header == {"id": "w", "name": "n"} and spec.graph is None
    assert copy.deepcopy(spec) == parse_spec(json.dumps({"steps": [{"id": "a"}]}), CLASSES)
