"""A workflow run survives kill -9 of the orchestrator: restarted on the same data dir, it picks up
where it was, including a step whose task finished while the orchestrator was down. Each step
appends its name to a file, so the file shows every step ran, and ran once."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from agent_infra.wire import orchestrator_pb2 as pb

from tests.daemon_support import eventually
from tests.orchestrator_support import IO_MOUNT, gated, orchestrator_stack, wait_status

pytestmark = pytest.mark.docker  # real daemons and containers

SPEC = {"steps": [
    {"id": "first", "payload": {"command": gated(f"echo first >> {IO_MOUNT}/log; printf one")}},
    {"id": "second", "depends_on": ["first"], "payload": {
        "command": f"echo second >> {IO_MOUNT}/log; printf %s {{{{ steps.first.result.stdout }}}}"
                   "-two"}},
    {"id": "third", "depends_on": ["second"], "payload": {
        "command": f"echo third >> {IO_MOUNT}/log; printf %s {{{{ input.suffix }}}}"}},
]}


async def test_a_run_resumes_after_kill_9(tmp_path: Path) -> None:
    async with orchestrator_stack(tmp_path) as stack:
        await stack.stub.CreateWorkflow(pb.CreateWorkflowRequest(
            id="resume", name="resume", spec=json.dumps(SPEC).encode()), timeout=30)
        run = await stack.stub.StartWorkflowRun(pb.StartWorkflowRunRequest(
            workflow_id="resume", idempotency_key="resume-key", input={"suffix": "three"}),
            timeout=30)
        await wait_status(stack.stub, f"{run.run_id}:first", "running")
        await stack.wait_container(f"{run.run_id}:first")

        await stack.kill_orchestrator()
        # The first step finishes while nobody is there to hear it.
        stack.open_gate()
        async def first_ran() -> bool:
            return "first" in stack.io_lines()
        await eventually(first_ran, "the first step to run")

        await stack.start_orchestrator()
        call = stack.stub.StreamWorkflowStatus(
            pb.StreamWorkflowStatusRequest(run_id=run.run_id), timeout=120)
        async with asyncio.timeout(120):
            updates = [update async for update in call]
        final = updates[-1]
        assert (final.status, final.steps_completed, final.total_steps) == ("completed", 3, 3)
        assert final.output["third.stdout"] == "three"
        second = await stack.stub.GetTaskStatus(
            pb.GetTaskStatusRequest(task_id=f"{run.run_id}:second"), timeout=30)
        assert second.result["stdout"] == "one-two"
        assert stack.io_lines() == ["first", "second", "third"]
        # The idempotency key still finds the same run after the restart.
        again = await stack.stub.StartWorkflowRun(pb.StartWorkflowRunRequest(
            workflow_id="resume", idempotency_key="resume-key"), timeout=30)
        assert (again.run_id, again.created) == (run.run_id, False)
