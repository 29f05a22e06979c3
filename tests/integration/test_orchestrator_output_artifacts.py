"""Declared JSON output artifacts end to end (issue 11): an `execution` payload submitted to the
orchestrator with `artifacts.outputs` gets the files back in the result's `outputs_summary`
(env-manager's class grants a results_dir); an output path escaping it is INVALID_ARGUMENT at
submit."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from agent_infra.wire import orchestrator_pb2 as pb

from tests.orchestrator_support import (
    RPC_TIMEOUT,
    Stack,
    Workload,
    new_id,
    orchestrator_stack,
    rpc_error,
    wait_done,
)

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.docker]

WORKLOADS = {"cpu_short": Workload(2, extra_toml='results_dir = "/results"\n')}


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    workdir: Path = tmp_path_factory.mktemp("orchestrator-artifacts")
    async with orchestrator_stack(workdir, workloads=WORKLOADS) as started:
        yield started


async def submit(stack: Stack, task_id: str, payload: dict[str, str]) -> pb.SubmitTaskResponse:
    request = pb.SubmitTaskRequest(id=task_id, payload=payload)
    setattr(request, "class", "cpu_short")  # a Python keyword
    answer: pb.SubmitTaskResponse = await stack.stub.SubmitTask(request, timeout=RPC_TIMEOUT)
    return answer


async def test_outputs_summary_over_submit_task(stack: Stack) -> None:
    task_id = new_id("artifacts")
    payload = {
        "execution": json.dumps({"command": [
            "sh", "-c", "mkdir -p out && echo '{\"loss\": 0.25}' > out/metrics.json"]}),
        "artifacts": json.dumps({"outputs": [{"path": "out/metrics.json", "type": "json"}]}),
    }
    assert (await submit(stack, task_id, payload)).success
    done = (await wait_done(stack.stub, [task_id]))[task_id]
    assert done.result["status"] == "completed", (done.error, dict(done.result))
    assert json.loads(done.result["outputs_summary"]) == {"metrics.json": {"loss": 0.25}}


@pytest.mark.parametrize("path", ["../x.json", "/etc/passwd"])
async def test_an_output_path_escape_is_invalid_argument_at_submit(stack: Stack,
                                                                   path: str) -> None:
    payload = {"execution": json.dumps({"command": ["true"]}),
               "artifacts": json.dumps({"outputs": [{"path": path, "type": "json"}]})}
    error = await rpc_error(submit(stack, new_id("escape"), payload))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "artifacts.outputs[0].path must be a relative path" in (error.details() or "")
