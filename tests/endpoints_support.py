"""Two real env-managers behind one real orchestrator, for the multi-endpoint dispatch tests.

Each env-manager has its own stack name, state dir and workload classes; the orchestrator's TOML
lists both as `[[env_managers]]`. Which env-manager served an RPC is read from its own log:
every daemon writes one JSON "rpc" line per RPC it served.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from agent_infra.wire import env_manager_pb2, env_manager_pb2_grpc

from tests.daemon_support import DaemonProcess, eventually, log_records, running_daemon
from tests.orchestrator_support import (
    Stack,
    Stub,
    Workload,
    orchestrator_stack,
    orchestrator_toml,
)

ENV_SERVICE = "/env_manager.v1.EnvManagerService"
CANCEL_TASK = f"{ENV_SERVICE}/CancelTask"
EXECUTE_TASK = f"{ENV_SERVICE}/ExecuteTask"
# Never called by the orchestrator: the test's own marker RPC.
GET_SERVICES_STATUS = f"{ENV_SERVICE}/GetServicesStatus"


def rpc_count(daemon: DaemonProcess, method: str) -> int:
    """RPCs of `method` the daemon has logged as served."""
    return sum(1 for record in log_records(daemon.log_text())
               if record.get("event") == "rpc" and record.get("method") == method)


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


@dataclass
class TwoEndpoints:
    stacks: list[Stack]  # each with its env-manager running
    orchestrator: DaemonProcess
    stub: Stub


@contextlib.asynccontextmanager
async def two_env_managers(tmp_path: Path, workloads: Mapping[str, Workload],
                           classes: Mapping[str, Mapping[str, int | str]]
                           ) -> AsyncIterator[TwoEndpoints]:
    """Stacks "a" and "b" (env-managers only; each removes its containers on exit) and an
    orchestrator with `classes` dispatching to both."""
    async with contextlib.AsyncExitStack() as exits:
        stacks = [await exits.enter_async_context(orchestrator_stack(
            tmp_path / name, workloads=workloads, start=False)) for name in ("a", "b")]
        for stack in stacks:
            await stack.start_env_manager()
        config = tmp_path / "orchestrator.toml"
        config.write_text(orchestrator_toml(classes) + "".join(
            f'[[env_managers]]\naddress = "{s.env_manager_addr}"\n' for s in stacks))
        orchestrator = await exits.enter_async_context(running_daemon(
            "orchestrator", tmp_path,
            args=["--config", str(config), "--data-dir", str(tmp_path / "orchestrator-data")]))
        yield TwoEndpoints(stacks, orchestrator, Stub(orchestrator.channel()))
