"""CancelTask reaches only the env-manager that runs the task, with two real env-managers.

Each env-manager has its own stack name, state dir and a cpu_short class of concurrency 1; the
orchestrator's TOML lists both as `[[env_managers]]`. Which env-manager got a CancelTask is read
from its own log: every daemon writes one JSON "rpc" line per RPC it served.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest

from client.wire import env_manager_pb2, env_manager_pb2_grpc
from client.wire import orchestrator_pb2 as pb
from tests.daemon_support import DaemonProcess, eventually, running_daemon
from tests.orchestrator_support import (
    Stack,
    Stub,
    Workload,
    gated,
    new_id,
    orchestrator_stack,
    orchestrator_toml,
    submit,
    wait_done,
    wait_status,
)

pytestmark = pytest.mark.docker  # real daemons and containers

ENV_SERVICE = "/env_manager.v1.EnvManagerService"
CANCEL_TASK = f"{ENV_SERVICE}/CancelTask"
# Never called by the orchestrator: the test's own marker RPC.
GET_SERVICES_STATUS = f"{ENV_SERVICE}/GetServicesStatus"


def rpc_count(daemon: DaemonProcess, method: str) -> int:
    """RPCs of `method` the daemon has logged as served."""
    count = 0
    for line in daemon.log_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("event") == "rpc" and \
                entry.get("method") == method:
            count += 1
    return count


def env_manager_of(stack: Stack) -> DaemonProcess:
    assert stack.env_manager is not None, f"env-manager of {stack.name} is not running"
    return stack.env_manager


async def logged_so_far(daemon: DaemonProcess) -> None:
    """Returns once every RPC the daemon served before this call is in its log: it logs a
    marker RPC of ours after them, and writes its log lines in order."""
    before = rpc_count(daemon, GET_SERVICES_STATUS)
    stub = env_manager_pb2_grpc.EnvManagerServiceStub(daemon.channel())
    await stub.GetServicesStatus(env_manager_pb2.GetServicesStatusRequest(), timeout=30)

    async def marked() -> bool:
        return rpc_count(daemon, GET_SERVICES_STATUS) > before
    await eventually(marked, f"{daemon.name} to log our GetServicesStatus")


async def runner_of(stacks: list[Stack], task_id: str) -> Stack:
    """The stack whose env-manager runs the task's container (once one does)."""
    found: list[Stack] = []

    async def running() -> bool:
        found[:] = [s for s in stacks if task_id in await s.task_containers(running_only=True)]
        return bool(found)
    await eventually(running, f"a container of {task_id} to run", timeout=60)
    assert len(found) == 1, [s.name for s in found]
    return found[0]


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
    workloads = {"cpu_short": Workload(concurrency=1)}
    async with contextlib.AsyncExitStack() as exits:
        # Both stacks' env-managers only; each stack removes its containers on exit.
        stacks = [await exits.enter_async_context(orchestrator_stack(
            tmp_path / name, workloads=workloads, start=False)) for name in ("a", "b")]
        for stack in stacks:
            await stack.start_env_manager()
        config = tmp_path / "orchestrator.toml"
        config.write_text(orchestrator_toml({"cpu_short": {"concurrency": 2}}) + "".join(
            f'[[env_managers]]\naddress = "{s.env_manager_addr}"\n' for s in stacks))
        orchestrator = await exits.enter_async_context(running_daemon(
            "orchestrator", tmp_path,
            args=["--config", str(config), "--data-dir", str(tmp_path / "orchestrator-data")]))
        stub = Stub(orchestrator.channel())

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
