"""Which declared output artifacts are read back, and which paths are refused."""

from __future__ import annotations

import json

import pytest
from agent_infra.runtime.artifacts import json_outputs
from agent_infra.runtime.errors import InvalidArgument


def test_only_json_outputs_are_read_and_only_their_paths_checked() -> None:
    # A payload written for the original may name any path for an output nobody reads.
    section = {"outputs": [{"path": "out/metrics.json", "type": "json"},
                           {"path": "/data/model.pt", "type": "binary"},
                           {"path": "../logs/run.txt"}]}
    assert json_outputs(json.dumps(section)) == (("metrics.json", "out/metrics.json"),)


@pytest.mark.parametrize("path", ["/etc/passwd.json", "../x.json", "a/../b.json", "./x.json"])
def test_a_json_output_outside_the_results_dir_is_refused(path: str) -> None:
    with pytest.raises(InvalidArgument, match=r"artifacts\.outputs\[0\]\.path"):
        json_outputs(json.dumps({"outputs": [{"path": path, "type": "json"}]}))
