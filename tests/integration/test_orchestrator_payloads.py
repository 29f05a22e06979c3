"""The original's task payloads end to end (issue 11): `execution` sections over gRPC and HTTP
/queue/submit run in real containers and return their __DSPY_RESULT__ output; a handler class
runs a domain payload; a payload with neither, a disallowed image or an ungranted mount is
INVALID_ARGUMENT at submit (the orchestrator knows each class's contract from env-manager).
Payloads come from tests/fixtures/original/payloads.json, written from ORIGINAL-CONTRACTS.md."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from agent_infra.wire import orchestrator_pb2 as pb

from tests.docker_support import TEST_IMAGE
from tests.orchestrator_support import (
    IO_MOUNT,
    RPC_TIMEOUT,
    Stack,
    Workload,
    new_id,
    orchestrator_stack,
    rpc_error,
    wait_done,
)

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.docker]

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "original" / "payloads.json"
HANDLER = ("cat > /tmp/in.json; echo \"stdin=$(cat /tmp/in.json)\"; "
           "echo \"file=$(cat $AGENT_INFRA_PAYLOAD_FILE)\"; "
           "echo \"env=$AGENT_INFRA_TASK_ID|$AGENT_INFRA_TASK_CLASS|$AGENT_INFRA_ATTEMPT\"; "
           "echo '__DSPY_RESULT__: {\"handled\": true}'")
WORKLOADS = {
    "cpu_short": Workload(4),
    "worker": Workload(2, extra_toml=(
        f'handler = {{ image = "{TEST_IMAGE}", command = ["sh", "-c", {json.dumps(HANDLER)}] }}\n'
    )),
}


def fixtures() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(FIXTURES.read_text())
    return loaded


def as_grpc(payload: dict[str, Any]) -> dict[str, str]:
    """What the original's callers send over gRPC: JSON text for objects."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in payload.items()}


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    workdir: Path = tmp_path_factory.mktemp("orchestrator-payloads")
    async with orchestrator_stack(workdir, workloads=WORKLOADS,
                                  classes={"worker": {"concurrency": 2}}) as started:
        yield started


async def submit(stack: Stack, task_id: str, payload: dict[str, str],
                 task_class: str = "cpu_short") -> pb.SubmitTaskResponse:
    request = pb.SubmitTaskRequest(id=task_id, payload=payload)
    setattr(request, "class", task_class)  # a Python keyword
    answer: pb.SubmitTaskResponse = await stack.stub.SubmitTask(request, timeout=RPC_TIMEOUT)
    return answer


async def test_execution_payload_over_grpc_returns_its_structured_output(stack: Stack) -> None:
    task_id = new_id("exec")
    assert (await submit(stack, task_id, as_grpc(fixtures()["execution_grpc"]))).success
    done = (await wait_done(stack.stub, [task_id]))[task_id]
    assert done.status == "completed", (done.error, dict(done.result))
    assert json.loads(done.result["runner_output"]) == {"score": 0.93, "label": "good"}
    assert done.result["exit_code"] == "0" and float(done.result["duration_ms"]) > 0
    assert "working" in done.result["stdout_tail"]
    assert done.result["workflow_id"] == "wf-0123456789abcdef"
    assert any("working_dir" in w for w in json.loads(done.result["warnings"]))


async def test_execution_object_over_http_queue_submit(stack: Stack) -> None:
    body = fixtures()["execution_http"]
    body = {**body, "id": new_id("http-exec"), "class": "cpu_short"}
    status, answer = await stack.http("POST", "/queue/submit", body=body)
    assert status == 201 and answer["ok"] is True, answer
    done = (await wait_done(stack.stub, [answer["id"]]))[answer["id"]]
    assert done.status == "completed", (done.error, dict(done.result))
    assert json.loads(done.result["runner_output"]) == {"answer": 42, "via": "http"}


async def test_a_handler_class_runs_a_domain_payload(stack: Stack) -> None:
    task_id = new_id("domain")
    domain = fixtures()["domain"]
    assert (await submit(stack, task_id, as_grpc(domain), "worker")).success
    done = (await wait_done(stack.stub, [task_id]))[task_id]
    assert done.status == "completed", (done.error, dict(done.result))
    lines = dict(line.split("=", 1) for line in done.result["stdout"].splitlines()
                 if "=" in line and not line.startswith("__"))
    assert json.loads(lines["stdin"]) == domain and json.loads(lines["file"]) == domain
    assert lines["env"] == f"{task_id}|worker|1"
    assert json.loads(done.result["runner_output"]) == {"handled": True}


async def test_a_payload_with_neither_is_invalid_argument_at_submit(stack: Stack) -> None:
    task_id = new_id("neither")
    error = await rpc_error(submit(stack, task_id, as_grpc(fixtures()["docs_data"])))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown key(s) 'data' (neither `execution` nor `command`" in (error.details() or "")
    assert "expected keys" in (error.details() or "")
    status, answer = await stack.http("POST", "/queue/submit", body={
        "id": new_id("neither-http"), "payload": fixtures()["domain"]})
    assert status == 400 and "no handler" in answer["error"], answer
    # Nothing was stored: the id is free.
    missing = await rpc_error(stack.stub.GetTaskStatus(pb.GetTaskStatusRequest(task_id=task_id),
                                                       timeout=RPC_TIMEOUT))
    assert missing.code() == grpc.StatusCode.NOT_FOUND


async def test_a_disallowed_image_or_mount_is_refused_at_submit(stack: Stack) -> None:
    data = fixtures()
    error = await rpc_error(submit(stack, new_id("img"),
                                   as_grpc(data["execution_disallowed_image"])))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "execution.image 'python:3.11-slim' is not allowed" in (error.details() or "")
    error = await rpc_error(submit(stack, new_id("mnt"),
                                   as_grpc(data["execution_disallowed_mount"])))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "execution.mounts[0]: host_path '/etc' is not granted" in (error.details() or "")
    # A granted mount (the class's /io host path) is accepted and used.
    (stack.io / "in.txt").write_text("from the host\n")
    task_id = new_id("granted")
    payload = {"execution": json.dumps({
        "command": ["cat", "/data/in.txt"],
        "mounts": [{"host_path": str(stack.io), "mount_path": "/data", "read_only": True}]})}
    assert (await submit(stack, task_id, payload)).success
    done = (await wait_done(stack.stub, [task_id]))[task_id]
    assert done.result["stdout"] == "from the host\n", (done.error, dict(done.result))
    assert IO_MOUNT != "/data"
