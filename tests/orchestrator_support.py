"""A real orchestrator dispatching to a real env-manager, for the orchestrator's end-to-end tests.

`orchestrator_stack` starts env-manager (its workload classes run the test image under a fresh
stack name, on a gRPC port chosen up front so it can be stopped and started again at the same
address) and an orchestrator pointed at it, with its own data dir and TOML config. Every task
container carries the stack's label and is removed afterwards, whatever the test did.

Tasks that must wait for the test use `gated`: a shell loop that waits for a file in a directory
the workload class mounts, so "running until the test says so" needs no timing at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp
import grpc
from agent_infra.wire import orchestrator_pb2 as pb
from agent_infra.wire import orchestrator_pb2_grpc

from tests.daemon_support import DaemonProcess, eventually, free_port, start_daemon
from tests.docker_support import TEST_IMAGE
from tests.env_support import STACK_LABEL, remove_stack_containers, rpc_error, stack_name

__all__ = [
    "IO_MOUNT", "TERMINAL", "Stack", "Workload", "event_stream", "follow", "gated", "list_tasks",
    "new_id", "next_events", "orchestrator_stack", "rpc_error", "submit", "task_request",
    "wait_done", "wait_status",
]

Stub = orchestrator_pb2_grpc.OrchestratorServiceStub
TERMINAL = frozenset({"completed", "failed", "cancelled"})
RPC_TIMEOUT = 30.0
# Where tasks see the test's shared directory (Stack.io on the host).
IO_MOUNT = "/io"
TASK_ID_LABEL = "org.agent-infra.task-id"
# Quick retries and availability re-checks: tests wait for the outcome, never for a backoff.
DISPATCH_TOML = ('[dispatch]\nretry_initial = "200ms"\nretry_max = "2s"\n'
                 'availability_check = "500ms"\n')


@dataclass(frozen=True)
class Workload:
    """One env-manager workload class running the test image, with the test's /io mounted."""

    concurrency: int = 4
    extra_toml: str = ""  # more lines of the class's table (e.g. a handler)


def env_manager_toml(stack: str, io_dir: Path, workloads: Mapping[str, Workload]) -> str:
    text = f'[stack]\nname = "{stack}"\nmax_concurrent = 8\nhealth_timeout = "30s"\n'
    for name, workload in workloads.items():
        text += (f'[workload_classes.{name}]\nimage = "{TEST_IMAGE}"\n'
                 f"concurrency = {workload.concurrency}\n"
                 f'mounts = ["{io_dir}:{IO_MOUNT}:rw"]\n'  # mounts are read-only unless rw
                 f"{workload.extra_toml}")
    return text


def orchestrator_toml(classes: Mapping[str, Mapping[str, int | str]]) -> str:
    """`[classes.NAME]` tables (merged over the built-in classes) and quick dispatch retries."""
    text = DISPATCH_TOML
    for name, settings in classes.items():
        text += f"[classes.{name}]\n"
        text += "".join(f"{key} = {json.dumps(value)}\n" for key, value in settings.items())
    return text


@dataclass
class Stack:
    workdir: Path
    name: str  # env-manager's stack name: the label value on every task container
    io: Path  # mounted at IO_MOUNT in every task container
    env_manager_config: Path
    orchestrator_config: Path
    data_dir: Path
    env_manager_port: int
    orchestrator_env: dict[str, str] = field(default_factory=dict)
    env_manager: DaemonProcess | None = None
    orchestrator: DaemonProcess | None = None
    _stub: Stub | None = None

    @property
    def stub(self) -> Stub:
        assert self._stub is not None, "the orchestrator is not running"
        return self._stub

    @property
    def daemon(self) -> DaemonProcess:
        assert self.orchestrator is not None, "the orchestrator is not running"
        return self.orchestrator

    @property
    def env_manager_addr(self) -> str:
        return f"127.0.0.1:{self.env_manager_port}"

    async def start_env_manager(self) -> DaemonProcess:
        """env-manager on its fixed port, with the same state dir every time."""
        assert self.env_manager is None, "env-manager is already running"
        daemon = await start_daemon("env-manager", self.workdir, args=[
            "--config", str(self.env_manager_config),
            "--state-dir", str(self.workdir / "env-manager-state"),
            "--grpc-addr", self.env_manager_addr])  # the last --grpc-addr wins
        daemon.grpc_port = self.env_manager_port
        self.env_manager = daemon
        return daemon

    async def stop_env_manager(self) -> None:
        """SIGTERM; returns once it has exited."""
        daemon, self.env_manager = self.env_manager, None
        if daemon is not None:
            await _stop(daemon)

    async def start_orchestrator(self) -> DaemonProcess:
        assert self.orchestrator is None, "the orchestrator is already running"
        daemon = await start_daemon("orchestrator", self.workdir, env=self.orchestrator_env, args=[
            "--config", str(self.orchestrator_config), "--data-dir", str(self.data_dir),
            "--env-managers", self.env_manager_addr])
        self.orchestrator = daemon
        self._stub = Stub(daemon.channel())
        return daemon

    async def kill_orchestrator(self, *, signalled: bool = False) -> None:
        """kill -9 (no shutdown code runs), then forget the process. `signalled`: the test
        already sent SIGKILL itself; a second one could reap the process behind asyncio's
        back (Popen.send_signal polls first), and its exit status would be lost."""
        daemon, self.orchestrator, self._stub = self.orchestrator, None, None
        assert daemon is not None
        if not signalled:
            daemon.signal(signal.SIGKILL)
        code = await daemon.wait_exit()
        assert code == -signal.SIGKILL, f"exit status {code}:\n{daemon.log_text()[-3000:]}"
        await _stop(daemon)

    async def reload_orchestrator(self, classes: Mapping[str, Mapping[str, int | str]]) -> None:
        """Rewrite the class tables and SIGHUP; returns once the reload is done (READY=1)."""
        self.orchestrator_config.write_text(orchestrator_toml(classes))
        daemon = self.daemon
        daemon.notify.messages.clear()
        daemon.signal(signal.SIGHUP)
        await daemon.notify.wait_for("RELOADING")
        await daemon.notify.wait_for("READY")

    def open_gate(self, name: str = "gate") -> None:
        (self.io / name).touch()

    def io_lines(self, name: str = "log") -> list[str]:
        path = self.io / name
        return path.read_text().splitlines() if path.exists() else []

    async def http(self, method: str, path: str, *, body: object = None,
                   token: str | None = None, raw: bytes | None = None
                   ) -> tuple[int, dict[str, Any]]:
        """An HTTP request to the orchestrator: (status, JSON object body)."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        if data is not None:
            headers["Content-Type"] = "application/json"
        async with aiohttp.ClientSession() as session, session.request(
                method, f"{self.daemon.http_url}{path}", data=data, headers=headers,
                timeout=aiohttp.ClientTimeout(total=RPC_TIMEOUT)) as response:
            found = await response.json(content_type=None)
            assert isinstance(found, dict), found
            return response.status, found

    async def containers(self, *, running_only: bool = False) -> list[dict[str, Any]]:
        """This stack's containers on the engine (task containers: env-manager labels them)."""
        filters: dict[str, list[str]] = {"label": [f"{STACK_LABEL}={self.name}"]}
        if running_only:
            filters["status"] = ["running"]
        async with aiodocker.Docker() as docker:
            found = await docker.containers.list(all=True, filters=filters)
            return [dict(container._container) for container in found]

    async def task_containers(self, *, running_only: bool = False) -> set[str]:
        """The task ids this stack's containers carry."""
        return {container["Labels"].get(TASK_ID_LABEL, "")
                for container in await self.containers(running_only=running_only)}

    async def wait_container(self, task_id: str, timeout: float = 60.0) -> None:
        """Until the task's container runs on the engine (the task really started)."""
        async def running() -> bool:
            return task_id in await self.task_containers(running_only=True)
        await eventually(running, f"the container of {task_id} to run", timeout=timeout)

    async def close(self) -> None:
        for daemon in (self.orchestrator, self.env_manager):
            if daemon is not None:
                await _stop(daemon)
        self.orchestrator = self.env_manager = self._stub = None


async def _stop(daemon: DaemonProcess) -> None:
    for channel in daemon.channels:
        await channel.close()
    daemon.channels.clear()
    try:
        await daemon.stop()
    finally:
        daemon.notify.close()


@contextlib.asynccontextmanager
async def orchestrator_stack(
    workdir: Path, *, workloads: Mapping[str, Workload] | None = None,
    classes: Mapping[str, Mapping[str, int | str]] | None = None,
    orchestrator_env: Mapping[str, str] | None = None, start: bool = True,
) -> AsyncIterator[Stack]:
    """env-manager (cpu_short and cpu_long unless `workloads` says) and an orchestrator
    (built-in classes, overridden by `classes`), both stopped and every task container removed
    afterwards."""
    name = stack_name()
    io = workdir / "io"
    io.mkdir(parents=True, exist_ok=True)
    io.chmod(0o777)  # tasks run as uid 65534 (the class default), not as this test's uid
    em_config = workdir / f"{name}-env-manager.toml"
    em_config.write_text(env_manager_toml(
        name, io, workloads or {"cpu_short": Workload(4), "cpu_long": Workload(2)}))
    orch_config = workdir / f"{name}-orchestrator.toml"
    orch_config.write_text(orchestrator_toml(classes or {}))
    stack = Stack(workdir, name, io, em_config, orch_config, workdir / "orchestrator-data",
                  free_port(), dict(orchestrator_env or {}))
    try:
        if start:
            await stack.start_env_manager()
            await stack.start_orchestrator()
        yield stack
    finally:
        try:
            await stack.close()
        finally:
            await remove_stack_containers(name)


# -- tasks ------------------------------------------------------------------------------------

def new_id(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def gated(then: str, gate: str = "gate") -> str:
    """A shell command that waits until the test opens `gate` (Stack.open_gate), then runs."""
    return f"until [ -e {IO_MOUNT}/{gate} ]; do sleep 0.05; done; {then}"


def task_request(task_id: str, command: str | Sequence[str] = "true", *,
                 task_class: str = "cpu_short", priority: int = 0, workflow_id: str = "",
                 timeout_seconds: int = 0, max_attempts: int = 0,
                 control: Mapping[str, str] | None = None, **payload: str
                 ) -> pb.SubmitTaskRequest:
    """`command` a shell string, or an argv list (sent as JSON); `control`: payload keys the
    orchestrator reads (timeout_seconds, max_attempts, retry_on_failure)."""
    text = command if isinstance(command, str) else json.dumps(list(command))
    return pb.SubmitTaskRequest(
        id=task_id, payload={"command": text, **payload, **(control or {})}, priority=priority,
        workflow_id=workflow_id, timeout_seconds=timeout_seconds, max_attempts=max_attempts,
        **{"class": task_class})


async def submit(stub: Stub, task_id: str, command: str | Sequence[str] = "true", *,
                 task_class: str = "cpu_short", priority: int = 0, workflow_id: str = "",
                 timeout_seconds: int = 0, max_attempts: int = 0,
                 control: Mapping[str, str] | None = None, **payload: str
                 ) -> pb.SubmitTaskResponse:
    """SubmitTask of `task_request(...)` with these arguments."""
    response: pb.SubmitTaskResponse = await stub.SubmitTask(task_request(
        task_id, command, task_class=task_class, priority=priority, workflow_id=workflow_id,
        timeout_seconds=timeout_seconds, max_attempts=max_attempts, control=control, **payload),
        timeout=RPC_TIMEOUT)
    return response


async def follow(stub: Stub, task_ids: Sequence[str], *, include_completed: bool = True,
                 timeout: float = 120.0) -> list[pb.TaskResult]:
    """Every message of a StreamTaskResults call for `task_ids`, until the server ends it."""
    call = stub.StreamTaskResults(pb.StreamTaskResultsRequest(
        task_ids=list(task_ids), include_completed=include_completed), timeout=timeout)
    return [message async for message in call]


async def wait_done(stub: Stub, task_ids: Sequence[str], timeout: float = 120.0
                    ) -> dict[str, pb.TaskResult]:
    """Each task's terminal result (the stream ends once all are terminal)."""
    final = {m.task_id: m for m in await follow(stub, task_ids, timeout=timeout)
             if m.status in TERMINAL}
    assert set(final) == set(task_ids), f"not terminal: {set(task_ids) - set(final)}"
    return final


async def list_tasks(stub: Stub, *, statuses: Sequence[str] = (), task_class: str = "",
                     workflow_id: str = "", page_size: int = 1000) -> list[pb.TaskSummary]:
    """Every page of ListTasks with these filters."""
    found: list[pb.TaskSummary] = []
    token = ""
    while True:
        page = await stub.ListTasks(pb.ListTasksRequest(
            statuses=list(statuses), task_class=task_class, workflow_id=workflow_id,
            page_size=page_size, page_token=token), timeout=RPC_TIMEOUT)
        found.extend(page.tasks)
        token = page.next_page_token
        if not token:
            return found


async def wait_status(stub: Stub, task_id: str, status: str, timeout: float = 60.0) -> None:
    async def reached() -> bool:
        found = await stub.GetTaskStatus(pb.GetTaskStatusRequest(task_id=task_id),
                                         timeout=RPC_TIMEOUT)
        return bool(found.status == status)
    await eventually(reached, f"task {task_id} to be {status}", timeout=timeout)


@contextlib.asynccontextmanager
async def event_stream(stub: Stub, *, event_types: Sequence[str] = (), since: int = 0
                       ) -> AsyncIterator[asyncio.Queue[pb.SystemEvent]]:
    """StreamEvents read in the background into a queue; cancelled on exit."""
    call = stub.StreamEvents(pb.StreamEventsRequest(event_types=list(event_types),
                                                    since_timestamp=since))
    queue: asyncio.Queue[pb.SystemEvent] = asyncio.Queue()

    async def pump() -> None:
        async for event in call:
            queue.put_nowait(event)

    reader = asyncio.ensure_future(pump())
    try:
        yield queue
    finally:
        call.cancel()
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            await reader


async def next_events(queue: asyncio.Queue[pb.SystemEvent], count: int,
                      timeout: float = 60.0) -> list[pb.SystemEvent]:
    async with asyncio.timeout(timeout):
        return [await queue.get() for _ in range(count)]
