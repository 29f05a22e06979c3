"""Declared JSON output artifacts (`artifacts.outputs`) read back into `outputs_summary` by
env-manager's TaskRunner, from a real container through the engine's archive API (issue 11)."""

from __future__ import annotations

import json
from collections.abc import Mapping

import pytest
from agent_infra.env_manager.tasks.outputs import MAX_FILE_BYTES, fit_summary
from agent_infra.env_manager.tasks.payload import parse_request
from agent_infra.env_manager.tasks.results import fit_output
from agent_infra.runtime.errors import InvalidArgument

from tests.integration.test_env_tasks import CLASS, Harness, busybox_class, harness, task_id

__all__ = ["harness"]

RESULTS = "/results"
OUTPUTS = {"outputs": [{"path": "out/metrics.json", "type": "json"},
                       {"path": "bad.json"}, {"path": "gone.json"}, {"path": "link.json"},
                       {"path": "model.bin", "type": "binary"}]}
WRITE = ("mkdir -p out && echo '{\"accuracy\": 0.91, \"steps\": 10}' > out/metrics.json && "
         "echo 'not json' > bad.json && ln -s /etc/passwd link.json && "
         "echo \"cwd=$(pwd) dir=$AGENT_INFRA_RESULTS_DIR\"")


def payload(command: str, outputs: Mapping[str, object] | None = None,
            **execution: object) -> dict[str, str]:
    return {"execution": json.dumps({"command": command, **execution}),
            "artifacts": json.dumps(outputs or OUTPUTS)}


async def test_json_outputs_come_back_in_outputs_summary(harness: Harness) -> None:
    runner = await harness.runner({CLASS: busybox_class(results_dir=RESULTS)})
    outcome = await runner.execute(task_id(), CLASS, payload(WRITE), 0)
    assert outcome.success, outcome.error
    assert f"cwd={RESULTS} dir={RESULTS}" in outcome.result["stdout"]
    summary = json.loads(outcome.result["outputs_summary"])
    assert summary["metrics.json"] == {"accuracy": 0.91, "steps": 10}
    assert summary["bad.json"]["error"].startswith("not valid JSON")
    assert summary["gone.json"]["error"].startswith("missing")
    assert summary["link.json"] == {"error": "not a regular file"}  # never followed
    assert set(summary) == {"metrics.json", "bad.json", "gone.json", "link.json"}  # no model.bin


async def test_a_failed_task_still_reports_its_outputs(harness: Harness) -> None:
    runner = await harness.runner({CLASS: busybox_class(results_dir=RESULTS)})
    outcome = await runner.execute(task_id(), CLASS, payload(WRITE + "; exit 3"), 0)
    assert not outcome.success and outcome.error == "exit code 3"
    assert json.loads(outcome.result["outputs_summary"])["metrics.json"]["steps"] == 10


async def test_an_oversized_output_is_refused_not_read(harness: Harness) -> None:
    runner = await harness.runner({CLASS: busybox_class(results_dir=RESULTS)})
    big = MAX_FILE_BYTES + 10
    command = (f"head -c {big} /dev/zero | tr '\\0' ' ' > big.json; "
               "echo '[1, 2]' > small.json")
    outputs = {"outputs": [{"path": "big.json"}, {"path": "small.json"}]}
    outcome = await runner.execute(task_id(), CLASS, payload(command, outputs), 0)
    assert outcome.success, outcome.error
    summary = json.loads(outcome.result["outputs_summary"])
    assert summary["big.json"]["error"].startswith(f"too large: {big} bytes")
    assert summary["small.json"] == [1, 2]


async def test_without_a_results_dir_outputs_are_not_read_and_a_warning_says_so(
        harness: Harness) -> None:
    runner = await harness.runner()
    outcome = await runner.execute(task_id(), CLASS, payload("true"), 0)
    assert outcome.success, outcome.error
    assert "outputs_summary" not in outcome.result
    assert any("grants no results_dir" in w for w in json.loads(outcome.result["warnings"]))


@pytest.mark.parametrize("path", ["../x.json", "/etc/passwd", "out/../../x.json", "./a.json",
                                  ""])
def test_an_output_path_escaping_the_results_dir_is_invalid_argument(path: str) -> None:
    classes = {CLASS: busybox_class(results_dir=RESULTS)}
    with pytest.raises(InvalidArgument, match=r"artifacts\.outputs\[0\]\.path"):
        parse_request("t", CLASS, payload("true", {"outputs": [{"path": path,
                                                                "type": "json"}]}), 0, classes)


def test_two_outputs_with_one_file_name_are_invalid_argument() -> None:
    classes = {CLASS: busybox_class(results_dir=RESULTS)}
    outputs = {"outputs": [{"path": "a/m.json"}, {"path": "b/m.json"}]}
    with pytest.raises(InvalidArgument, match="keyed by file name"):
        parse_request("t", CLASS, payload("true", outputs), 0, classes)


def test_the_summary_is_fitted_to_the_response_largest_entries_first() -> None:
    summary = json.dumps({"big": "x" * 5000, "small": [1]})
    fitted = json.loads(fit_summary(summary, 1000))
    assert fitted["small"] == [1] and "left out" in fitted["big"]["error"]
    result = fit_output({"stdout": "", "stderr": "", "outputs_summary": summary}, "", 4000)
    assert len(result["outputs_summary"]) <= 2000
    assert json.loads(result["outputs_summary"])["small"] == [1]
