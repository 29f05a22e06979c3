"""Issue 10 on real daemons: step output substituted into a text command is printed literally
(finding 5), and a poison run written into the store fails alone while the daemon starts and
serves (finding 1)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import grpc
import pytest
from agent_infra.wire import orchestrator_pb2 as pb

from tests.orchestrator_support import gated, orchestrator_stack, wait_status

pytestmark = pytest.mark.docker  # real daemons and containers

EVIL = "x; echo INJECTED $(id -u)"


async def _final(stub: object, run_id: str) -> pb.WorkflowStatusUpdate:
    call = stub.StreamWorkflowStatus(  # type: ignore[attr-defined]
        pb.StreamWorkflowStatusRequest(run_id=run_id), timeout=120)
    async with asyncio.timeout(120):
        updates = [update async for update in call]
    final: pb.WorkflowStatusUpdate = updates[-1]
    return final


async def test_step_output_in_a_text_command_is_printed_literally(tmp_path: Path) -> None:
    spec = {"steps": [
        {"id": "first", "payload": {"command": json.dumps(["printf", "%s", EVIL])}},
        {"id": "second", "depends_on": ["first"],
         "payload": {"command": "echo {{ steps.first.result.stdout }}"}},
    ]}
    async with orchestrator_stack(tmp_path) as stack:
        await stack.stub.CreateWorkflow(pb.CreateWorkflowRequest(
            id="inject", name="inject", spec=json.dumps(spec).encode()), timeout=30)
        run = await stack.stub.StartWorkflowRun(pb.StartWorkflowRunRequest(
            workflow_id="inject", idempotency_key="k"), timeout=30)
        final = await _final(stack.stub, run.run_id)
        assert final.status == "completed", final.error
        assert final.output["second.stdout"] == EVIL + "\n"


async def test_a_poison_run_in_the_store_fails_alone(tmp_path: Path) -> None:
    spec = {"steps": [{"id": "first", "payload": {"command": gated("true")}},
                      {"id": "second", "depends_on": ["first"], "payload": {"command": "true"}}]}
    async with orchestrator_stack(tmp_path) as stack:
        await stack.stub.CreateWorkflow(pb.CreateWorkflowRequest(
            id="poison", name="poison", spec=json.dumps(spec).encode()), timeout=30)
        run = await stack.stub.StartWorkflowRun(pb.StartWorkflowRunRequest(
            workflow_id="poison", idempotency_key="k"), timeout=30)
        await wait_status(stack.stub, f"{run.run_id}:first", "running")
        await stack.kill_orchestrator()
        # What an older release could store: a spec nested 900 deep, written straight into
        # the file while the daemon is down.
        deep = ('{"steps": [{"id": "first", "payload": {"x": ' + "[" * 900 + "]" * 900
                + '}}, {"id": "second", "depends_on": ["first"]}]}')
        conn = sqlite3.connect(stack.data_dir / "orchestrator.sqlite3")
        with conn:
            conn.execute("UPDATE workflows SET spec = ? WHERE id = 'poison'", (deep,))
        conn.close()
        stack.open_gate()

        await stack.start_orchestrator()
        health = await stack.stub.Health(pb.HealthRequest(), timeout=30)
        assert health.version
        # The same spec sent today is refused where it is parsed, naming the limit.
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stack.stub.CreateWorkflow(pb.CreateWorkflowRequest(
                id="deep", name="deep", spec=deep.encode()), timeout=30)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "the limit is 64" in str(refused.value.details())
        final = await _final(stack.stub, run.run_id)
        assert final.status == "failed"
        assert "deep" in final.error, final.error
        # And it still serves: a new, valid workflow runs to the end.
        await stack.stub.CreateWorkflow(pb.CreateWorkflowRequest(
            id="after", name="after", spec=json.dumps(
                {"steps": [{"id": "a", "payload": {"command": "true"}}]}).encode()), timeout=30)
        after = await stack.stub.StartWorkflowRun(pb.StartWorkflowRunRequest(
            workflow_id="after", idempotency_key="k2"), timeout=30)
        assert (await _final(stack.stub, after.run_id)).status == "completed"
