"""A retried execution goes back to the env-manager running it, with two real env-managers.

The env-manager running a gated task is killed (kill -9): its container keeps running, the
orchestrator's ExecuteTask fails UNAVAILABLE (once gRPC's own retries of it are spent), and the
task waits to be retried under the same execution id. The orchestrator has one slot for the
class, which a second task of higher priority takes meanwhile: it can only go to the other
env-manager, and holds the retry back until the test lets it finish. By then the first
env-manager is back (same address and state dir: it adopts the container), and only the other
one reports a free slot: the retry still goes back to the first, attaches to the container, and
the task completes having run once.

Counting is done on the engine's event log (containers created for the task id, by stack) and on
the env-managers' own records: the `grpc_server_started_total` metric says an ExecuteTask has
arrived (the JSON "rpc" log line only comes when it ends), and the log lines are checked last.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import aiodocker
import pytest
from agent_infra.orchestrator.executors.env_manager import AVAILABILITY_TTL
from agent_infra.wire import orchestrator_pb2 as pb

from tests.daemon_support import (
    DaemonProcess,
    eventually,
    fetch_metrics,
    sample_value,
)
from tests.endpoints_support import (
    EXECUTE_TASK,
    env_manager_of,
    logged_so_far,
    rpc_count,
    runner_of,
    two_env_managers,
)
from tests.env_support import STACK_LABEL
from tests.orchestrator_support import (
    IO_MOUNT,
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

TASK_ID_LABEL = "org.agent-infra.task-id"


async def kill_env_manager(stack: Stack) -> DaemonProcess:
    """kill -9 the stack's env-manager (no shutdown code runs); the dead process, for its log."""
    daemon = env_manager_of(stack)
    stack.env_manager = None
    daemon.signal(signal.SIGKILL)
    code = await daemon.wait_exit()
    assert code == -signal.SIGKILL, f"exit status {code}:\n{daemon.log_text()[-3000:]}"
    for channel in daemon.channels:
        await channel.close()
    daemon.channels.clear()
    daemon.notify.close()
    return daemon


async def executions_started(daemon: DaemonProcess) -> int:
    """ExecuteTask calls that have reached the env-manager (ended or not)."""
    metrics = await fetch_metrics(daemon)
    return int(sample_value(metrics.get("grpc_server_started", []),
                            "grpc_server_started_total", grpc_method="ExecuteTask"))


async def containers_created(task_id: str, since: float) -> list[str]:
    """The stack of every container created for the task since `since` (unix seconds), from
    the engine's event log: removed containers count too."""
    filters = {"type": ["container"], "event": ["create"], "label": [f"{TASK_ID_LABEL}={task_id}"]}
    async with aiodocker.Docker() as docker, docker._query("events", params={
            "since": str(int(since) - 1), "until": f"{time.time():.9f}",
            "filters": json.dumps(filters)}) as response:
        text = await response.text()
    events = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [str(event["Actor"]["Attributes"].get(STACK_LABEL, "")) for event in events]


async def orchestrator_reaches(stub: Stub, stack: Stack) -> None:
    """Until the orchestrator's Health (asked live of each endpoint) has the stack's
    env-manager SERVING: its channel to that address is connected again."""
    async def serving() -> bool:
        health: pb.HealthResponse = await stub.Health(pb.HealthRequest(), timeout=30)
        return health.services.get(f"env-manager {stack.env_manager_addr}") == "SERVING"
    await eventually(serving, f"the orchestrator to reach {stack.name}'s env-manager", timeout=60)


@pytest.mark.timeout(300)
async def test_a_retry_goes_back_to_the_env_manager_running_the_task(tmp_path: Path) -> None:
    began = time.time()
    # One orchestrator slot for the class: whatever holds it holds the retry back.
    async with two_env_managers(tmp_path, {"cpu_short": Workload(concurrency=1)},
                                {"cpu_short": {"concurrency": 1}}) as setup:
        stacks, orchestrator, stub = setup.stacks, setup.orchestrator, setup.stub

        task, holder = new_id("sticky"), new_id("holder")
        await submit(stub, task, gated(f"echo ran >> {IO_MOUNT}/runs"))
        await wait_status(stub, task, "running")
        runner = await runner_of(stacks, task)
        other = next(s for s in stacks if s is not runner)
        [container] = [c for c in await runner.containers(running_only=True)
                       if c["Labels"].get(TASK_ID_LABEL) == task]
        # Queued behind the task in the orchestrator (its one slot is taken), ahead of any
        # retry of the task (higher priority).
        await submit(stub, holder, gated("true", "holder-gate"), priority=10)

        killed = await kill_env_manager(runner)
        # The task's attempt failed, so the slot went to the holder: to the other env-manager,
        # the only one answering. The task's container runs on; the task waits for its retry.
        assert await runner_of(stacks, holder) is other
        placed_at = time.monotonic()
        assert task in await runner.task_containers(running_only=True)
        status: pb.GetTaskStatusResponse = await stub.GetTaskStatus(
            pb.GetTaskStatusRequest(task_id=task), timeout=30)
        assert (status.status, status.attempts) == ("pending", 1), status

        # The env-manager comes back at the same address, and the orchestrator reaches it.
        await runner.start_env_manager()
        await orchestrator_reaches(stub, runner)
        # The "no answer" cached while placing the holder has expired (it is not what is tested).
        await asyncio.sleep(max(0.0, placed_at + AVAILABILITY_TTL - time.monotonic()))
        assert await executions_started(env_manager_of(runner)) == 0
        assert await executions_started(env_manager_of(other)) == 1  # the holder's

        # The holder ends, freeing the slot: the task is retried while both env-managers answer
        # and only the other one has a free slot. It goes back to its own.
        other.open_gate("holder-gate")
        held = await wait_done(stub, [holder], timeout=60)
        assert held[holder].status == "completed", held[holder]

        async def retried() -> bool:
            return await executions_started(env_manager_of(runner)) + \
                await executions_started(env_manager_of(other)) > 1
        await eventually(retried, f"the retry of {task} to reach an env-manager", timeout=60)
        assert await executions_started(env_manager_of(runner)) == 1
        assert await executions_started(env_manager_of(other)) == 1

        # The retry attached to the container that was running all along; the gate ends it.
        runner.open_gate()
        final = (await wait_done(stub, [task], timeout=60))[task]
        assert final.status == "completed", final
        assert final.attempts == 2, final
        assert final.result["container_id"] == container["Id"], final.result
        assert final.result["cached"] == "false", final.result
        assert runner.io_lines("runs") == ["ran"]
        assert other.io_lines("runs") == []
        # One container ever, on the runner's stack.
        assert await containers_created(task, began) == [runner.name]

        # The env-managers' own logs: the retry's ExecuteTask on the restarted runner; none
        # but the holder's on the other one; the killed one never got to log its call.
        for stack in stacks:
            await logged_so_far(env_manager_of(stack))
        assert rpc_count(env_manager_of(runner), EXECUTE_TASK) == 1
        assert rpc_count(env_manager_of(other), EXECUTE_TASK) == 1
        assert rpc_count(killed, EXECUTE_TASK) == 0
        assert "retry_moved" not in orchestrator.log_text()
