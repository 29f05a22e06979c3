"""CancelTask reaches only the env-manager that runs the task, with two real env-managers.

Each env-manager has its own stack name, state dir and a cpu_short class of concurrency 1; the
orchestrator's TOML lists both as `[[env_managers]]`. Which env-manager got a CancelTask is read
from its own log: every daemon writes one JSON "rpc" line per RPC it served.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from agent_infra.wire import orchestrator_pb2 as pb

from tests.daemon_support import eventually
from tests.endpoints_support import (
    CANCEL_TASK,
    env_manager_of,
    logged_so_far,
    rpc_count,
    runner_of,
    two_env_managers,
)
from tests.orchestrator_support import (
    Stack,
    Stub,
    Workload,
    gated,
    new_id,
    submit,
    wait_done,
    wait_status,
)

pytestmark = pytest.mark.docker  # real daemons and containers

async def cancel_and_check(stub: Stub, task_id: str, runner: Stack, stacks: list[Stack],
                           expected: dict[str, int]) -> None:
    """Cancel through the orchestrator; the task ends cancelled, its container is gone, and
    the env-managers' CancelTask counts (by stack name) are `expected` afterwards."""
    answer: pb.CancelTaskResponse = await stub.CancelTask(
        pb.CancelTaskRequest(task_id=task_id), timeout=30)
    assert answer.success and answer.status == "cancelled", answer
    final = await wait_done(stub, [task_id], timeout=60)
    assert final[task_id].status == "cancelled", final[task_id]

    async def gone() -> bool:
        return task_id not in await runner.task_containers()
    await eventually(gone, f"the container of {task_id} to be removed", timeout=60)
    # The orchestrator answered after its CancelTask calls to env-manager had all returned:
    # with the marker logged after them, each env-manager's count is final.
    for stack in stacks:
        await logged_so_far(env_manager_of(stack))
    counts = {s.name: rpc_count(env_manager_of(s), CANCEL_TASK) for s in stacks}
    assert counts == expected, counts


@pytest.mark.timeout(300)
async def test_cancel_goes_only_to_the_env_manager_running_the_task(tmp_path: Path) -> None:
    async with two_env_managers(tmp_path, {"cpu_short": Workload(concurrency=1)},
                                {"cpu_short": {"concurrency": 2}}) as setup:
        stacks, orchestrator, stub = setup.stacks, setup.orchestrator, setup.stub

        first, second = new_id("first"), new_id("second")
        await submit(stub, first, gated("true"))
        await wait_status(stub, first, "running")
        runner = await runner_of(stacks, first)
        # The first one's env-manager has no room left: the second goes to the other one.
        await submit(stub, second, gated("true"))
        await wait_status(stub, second, "running")
        other = await runner_of(stacks, second)
        assert other is not runner
        for stack in stacks:
            assert rpc_count(env_manager_of(stack), CANCEL_TASK) == 0

        await cancel_and_check(stub, first, runner, stacks, {runner.name: 1, other.name: 0})
        # The other task was left alone.
        assert second in await other.task_containers(running_only=True)
        await cancel_and_check(stub, second, other, stacks, {runner.name: 1, other.name: 1})

        log = orchestrator.log_text()
        assert "cancel_not_delivered" not in log, log[-3000:]
