"""The original runner's `execution` payloads and domain payloads for a class's handler, run by
env-manager's TaskRunner in real containers (issue 11, task payloads)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from agent_infra.env_manager.tasks.container import container_config
from agent_infra.env_manager.tasks.payload import parse_request
from agent_infra.env_manager.tasks.workloads import WorkloadClass
from agent_infra.runtime.errors import InvalidArgument

from tests.integration.test_env_tasks import CLASS, Harness, busybox_class, harness, task_id

__all__ = ["harness"]

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "original" / "payloads.json"
HANDLER_SCRIPT = ("cat > /tmp/stdin.json; "
                  "echo \"stdin=$(cat /tmp/stdin.json)\"; "
                  "echo \"file=$(cat $AGENT_INFRA_PAYLOAD_FILE)\"; "
                  "echo \"env=$AGENT_INFRA_TASK_ID|$AGENT_INFRA_TASK_CLASS|$AGENT_INFRA_ATTEMPT\"; "
                  "echo \"uid=$(id -u)\"; "
                  "echo '__DSPY_RESULT__: {\"handled\": true}'")


def fixtures() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(FIXTURES.read_text())
    return loaded


def as_grpc(payload: dict[str, Any]) -> dict[str, str]:
    """As the original's callers send over gRPC: string values, objects as JSON text."""
    return {key: value if isinstance(value, str) else json.dumps(value)
            for key, value in payload.items()}


def handler_class(**overrides: Any) -> WorkloadClass:
    return busybox_class(handler={"image": "local/busybox:latest",
                                  "command": ["sh", "-c", HANDLER_SCRIPT]}, **overrides)


async def test_execution_section_runs_and_returns_its_structured_output(
        harness: Harness) -> None:
    runner = await harness.runner()
    outcome = await runner.execute(task_id(), CLASS, as_grpc(fixtures()["execution_grpc"]), 0)
    assert outcome.success, outcome.error
    result = outcome.result
    # The last marker line wins; env and container_workdir were honoured.
    assert json.loads(result["runner_output"]) == {"score": 0.93, "label": "good"}
    assert result["stdout"].splitlines()[-1] == "/tmp"
    assert result["exit_code"] == "0" and float(result["duration_ms"]) > 0
    assert result["status"] == "completed"
    assert "working" in result["stdout_tail"]
    assert result["workflow_id"] == "wf-0123456789abcdef" and result["tenant"] == "acme"
    warnings = json.loads(result["warnings"])
    assert any("working_dir" in w and "not honoured" in w for w in warnings)
    assert any("gpu_class" in w and "storage_gb" in w for w in warnings)
    assert result["timeout_s"] == "60"


async def test_execution_resources_are_capped_by_the_class(harness: Harness) -> None:
    workload = busybox_class(cpus=0.5, memory="64MiB")
    runner = await harness.runner({CLASS: workload})
    payload = {"execution": json.dumps({
        "command": ["true"], "resources": {"cpu_millicores": 4000, "mem_bytes": 1 << 40},
        "timeout_seconds": 10_000})}
    host = container_config(parse_request("t", CLASS, payload, 0, {CLASS: workload}), workload,
                            "s", 1024)["HostConfig"]
    assert host["Memory"] == 64 * 1024 * 1024 and host["NanoCpus"] == 500_000_000
    assert host["CapDrop"] == ["ALL"] and host["PidsLimit"] == workload.pids_limit
    smaller = {"execution": json.dumps({"command": ["true"], "resources": {
        "cpu_millicores": 250, "mem_bytes": 32 * 1024 * 1024}})}
    host = container_config(parse_request("t", CLASS, smaller, 0, {CLASS: workload}), workload,
                            "s", 1024)["HostConfig"]
    assert host["Memory"] == 32 * 1024 * 1024 and host["NanoCpus"] == 250_000_000
    outcome = await runner.execute(task_id(), CLASS, payload, 0)
    assert outcome.success, outcome.error
    assert outcome.result["timeout_capped"] == "true" and outcome.result["timeout_s"] == "60"
    warnings = " ".join(json.loads(outcome.result["warnings"]))
    assert "cpu_millicores capped" in warnings and "mem_bytes capped" in warnings


async def test_execution_refuses_a_disallowed_image_or_mount(harness: Harness,
                                                             tmp_path: Path) -> None:
    granted = tmp_path / "granted"
    granted.mkdir()
    runner = await harness.runner({CLASS: busybox_class(mounts=[f"{granted}:/granted"])})
    data = fixtures()
    with pytest.raises(InvalidArgument, match=r"execution\.image 'python:3\.11-slim' is not "
                                              r"allowed"):
        await runner.execute(task_id(), CLASS, as_grpc(data["execution_disallowed_image"]), 0)
    with pytest.raises(InvalidArgument, match=r"execution\.mounts\[0\]: host_path '/etc' is not "
                                              r"granted"):
        await runner.execute(task_id(), CLASS, as_grpc(data["execution_disallowed_mount"]), 0)
    rw = {"execution": json.dumps({"command": ["true"], "mounts": [
        {"host_path": str(granted), "mount_path": "/elsewhere", "read_only": False}]})}
    with pytest.raises(InvalidArgument, match="granted read-only"):
        await runner.execute(task_id(), CLASS, rw, 0)
    (granted / "hello.txt").write_text("hi from the host\n")
    ok = {"execution": json.dumps({"command": ["sh", "-c", "cat /elsewhere/hello.txt; "
                                               "touch /elsewhere/x || echo read-only"],
                                   "mounts": [{"host_path": str(granted),
                                               "mount_path": "/elsewhere"}]})}
    outcome = await runner.execute(task_id(), CLASS, ok, 0)
    assert outcome.result["stdout"] == "hi from the host\nread-only\n", outcome.result


async def test_a_domain_payload_goes_to_the_class_handler(harness: Harness) -> None:
    runner = await harness.runner({CLASS: handler_class()})
    tid = task_id()
    domain = fixtures()["domain"]
    outcome = await runner.execute(tid, CLASS, as_grpc(domain), 0, attempt=2)
    assert outcome.success, (outcome.error, outcome.result)
    lines = dict(line.split("=", 1) for line in outcome.result["stdout"].splitlines()
                 if "=" in line and not line.startswith("__"))
    assert json.loads(lines["stdin"]) == domain
    assert json.loads(lines["file"]) == domain
    assert lines["env"] == f"{tid}|{CLASS}|2"
    assert lines["uid"] == "65534"  # hardening unchanged: the class's non-root user
    assert json.loads(outcome.result["runner_output"]) == {"handled": True}


async def test_a_domain_payload_without_a_handler_is_invalid_argument(harness: Harness) -> None:
    runner = await harness.runner()
    with pytest.raises(InvalidArgument, match=r"unknown key\(s\) 'data' \(neither `execution` "
                                              r"nor `command`.*expected keys: `execution`"):
        await runner.execute(task_id(), CLASS, as_grpc(fixtures()["docs_data"]), 0)
    # Our own form still runs as before, an empty payload too (the image's own CMD).
    outcome = await runner.execute(task_id(), CLASS, {"command": "echo ours"}, 0)
    assert outcome.result["stdout"] == "ours\n" and "runner_output" not in outcome.result
