"""Chaos and soak machinery: a real env-manager and orchestrator on fixed ports that can be
killed with SIGKILL and started again at the same addresses, and workloads whose every execution
leaves a line in a file, so lost and doubled work can be counted.

Used by tests/integration/test_chaos.py (3 minutes), bench/chaos.py (10 minutes) and
bench/soak.py. Only the wire (agent_infra.wire) and the daemons' command lines are used.

Task commands write `start <task id>` to /io/markers when they begin and `done <task id>` when
they end; /io is a host directory the workload class grants read-write. A task is:

* lost when it was acknowledged (SubmitTask answered success) and, after the chaos ends and both
  daemons run again, it is unknown, never reaches a terminal status, or is reported completed
  although its command never started;
* run twice when its `start` line appears more than once.

Workflow runs are started with an idempotency key; a run is lost when its key no longer leads
to a run or the run never ends, duplicated when the key leads to another run (or `created`)
or one of its steps ran twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import random
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import grpc
from agent_infra.wire import orchestrator_pb2 as pb
from agent_infra.wire import orchestrator_pb2_grpc

from tests.daemon_support import DaemonProcess, free_port, start_daemon
from tests.docker_support import TEST_IMAGE
from tests.env_support import remove_stack_containers, stack_name

IO_MOUNT = "/io"
MARKERS = "markers"
TERMINAL = frozenset({"completed", "failed", "cancelled"})
RUN_TERMINAL = frozenset({"completed", "failed", "cancelled"})
RPC_SECONDS = 10.0
#: gRPC codes a client meets while a daemon is down or restarting: retried
TRANSIENT = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                       grpc.StatusCode.CANCELLED})
T = TypeVar("T")


def env_manager_config(stack: str, io: Path, concurrency: int) -> str:
    return (f'[stack]\nname = "{stack}"\nmax_concurrent = 8\nhealth_timeout = "30s"\n'
            f'[workload_classes.cpu_short]\nimage = "{TEST_IMAGE}"\nconcurrency = {concurrency}\n'
            f'max_timeout = "1h"\nmounts = ["{io}:{IO_MOUNT}:rw"]\n')


def orchestrator_config(concurrency: int, max_attempts: int = 50) -> str:
    return ('[dispatch]\nretry_initial = "200ms"\nretry_max = "2s"\navailability_check = "500ms"\n'
            f"[classes.cpu_short]\nconcurrency = {concurrency}\nmax_attempts = {max_attempts}\n"
            'default_timeout = "10m"\n')


@dataclass
class Cluster:
    """env-manager and orchestrator on gRPC ports fixed for the cluster's life."""

    workdir: Path
    concurrency: int = 4
    name: str = field(default_factory=stack_name)
    env_manager_port: int = field(default_factory=free_port)
    orchestrator_port: int = field(default_factory=free_port)
    env_manager: DaemonProcess | None = None
    orchestrator: DaemonProcess | None = None
    #: every daemon process started, for figures (RSS, fds) and the final clean-up
    history: list[DaemonProcess] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.io = self.workdir / "io"
        self.io.mkdir(parents=True, exist_ok=True)
        # Task containers may run as a non-root user: let any uid append the markers.
        self.io.chmod(0o777)
        (self.io / MARKERS).touch()
        (self.io / MARKERS).chmod(0o666)
        self.em_config = self.workdir / f"{self.name}-env-manager.toml"
        self.em_config.write_text(env_manager_config(self.name, self.io, self.concurrency))
        self.orch_config = self.workdir / f"{self.name}-orchestrator.toml"
        self.orch_config.write_text(orchestrator_config(self.concurrency))
        self.data_dir = self.workdir / "orchestrator-data"

    @property
    def orchestrator_addr(self) -> str:
        return f"127.0.0.1:{self.orchestrator_port}"

    @property
    def env_manager_addr(self) -> str:
        return f"127.0.0.1:{self.env_manager_port}"

    async def start_env_manager(self) -> None:
        assert self.env_manager is None
        daemon = await start_daemon("env-manager", self.workdir, args=[
            "--config", str(self.em_config), "--state-dir", str(self.workdir / "em-state"),
            "--grpc-addr", self.env_manager_addr])  # the last --grpc-addr wins
        daemon.grpc_port = self.env_manager_port
        self.env_manager = daemon
        self.history.append(daemon)

    async def start_orchestrator(self) -> None:
        assert self.orchestrator is None
        daemon = await start_daemon("orchestrator", self.workdir, args=[
            "--config", str(self.orch_config), "--data-dir", str(self.data_dir),
            "--env-managers", self.env_manager_addr, "--grpc-addr", self.orchestrator_addr])
        daemon.grpc_port = self.orchestrator_port
        self.orchestrator = daemon
        self.history.append(daemon)

    async def kill(self, which: str) -> None:
        """SIGKILL (no shutdown code runs) and reap."""
        daemon = getattr(self, which.replace("-", "_"))
        setattr(self, which.replace("-", "_"), None)
        if daemon is None:
            return
        with contextlib.suppress(ProcessLookupError):
            daemon.process.kill()
        await daemon.process.wait()
        daemon.notify.close()

    async def restart(self, which: str) -> None:
        await self.kill(which)
        start = self.start_env_manager if which == "env-manager" else self.start_orchestrator
        for attempt in range(5):
            try:
                await start()
                return
            except AssertionError:  # did not come up (e.g. the port still held): again
                if attempt == 4:
                    raise
                await asyncio.sleep(0.5)

    async def stop(self) -> None:
        for which in ("orchestrator", "env-manager"):
            daemon = getattr(self, which.replace("-", "_"))
            setattr(self, which.replace("-", "_"), None)
            if daemon is not None:
                try:
                    await daemon.stop()
                finally:
                    daemon.notify.close()

    def markers(self) -> Counter[str]:
        """How many times each marker line was written."""
        text = (self.io / MARKERS).read_text(errors="replace")
        return Counter(line.strip() for line in text.splitlines() if line.strip())


@contextlib.asynccontextmanager
async def cluster(workdir: Path, concurrency: int = 4) -> AsyncIterator[Cluster]:
    """Both daemons started; both stopped and every task container removed afterwards."""
    found = Cluster(workdir, concurrency)
    try:
        await found.start_env_manager()
        await found.start_orchestrator()
        yield found
    finally:
        try:
            await found.stop()
        finally:
            await remove_stack_containers(found.name)


# -- calls that ride out restarts -----------------------------------------------------------------


async def retrying(call: Callable[[], Awaitable[T]], *, deadline: float,
                   on_retry: Callable[[grpc.StatusCode], None] | None = None) -> T:
    """`call` again while it fails with a transient code (a daemon down), until `deadline`
    (time.monotonic); any other error is raised at once."""
    delay = 0.1
    while True:
        try:
            return await call()
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in TRANSIENT or time.monotonic() > deadline:
                raise
            if on_retry is not None:
                on_retry(exc.code())
        await asyncio.sleep(delay)
        delay = min(delay * 2, 1.0)


def task_command(task_id: str, seconds: float) -> str:
    return (f"echo start {task_id} >> {IO_MOUNT}/{MARKERS}; sleep {seconds:.2f}; "
            f"echo done {task_id} >> {IO_MOUNT}/{MARKERS}")


WORKFLOW_SPEC = json.dumps({"steps": [
    {"id": "a", "payload": {"command":
        f"echo start wf-{{{{ run.id }}}}-a >> {IO_MOUNT}/{MARKERS}; sleep 0.3"}},
    {"id": "b", "payload": {"command":
        f"echo start wf-{{{{ run.id }}}}-b >> {IO_MOUNT}/{MARKERS}; sleep 0.3"}},
    {"id": "c", "depends_on": ["a", "b"], "payload": {"command":
        f"echo start wf-{{{{ run.id }}}}-c >> {IO_MOUNT}/{MARKERS}"}},
]}).encode()
WORKFLOW_STEPS = ("a", "b", "c")


@dataclass
class Ledger:
    """What the clients were told, and what went wrong on the way."""

    acked_tasks: dict[str, float] = field(default_factory=dict)  # id -> submit latency (s)
    acked_runs: dict[str, str] = field(default_factory=dict)  # idempotency key -> run id
    retries: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)  # non-transient RPC errors
    kills: Counter[str] = field(default_factory=Counter)
    docker_pauses: int = 0


class Load:
    """Workers that each submit a task and follow it to its end, again and again, and one that
    starts workflow runs, all riding out restarts."""

    def __init__(self, cluster: Cluster, ledger: Ledger, *, task_seconds: tuple[float, float],
                 workflow_id: str) -> None:
        self.cluster, self.ledger = cluster, ledger
        self.task_seconds = task_seconds
        self.workflow_id = workflow_id
        self.channel = grpc.aio.insecure_channel(cluster.orchestrator_addr)
        self.stub = orchestrator_pb2_grpc.OrchestratorServiceStub(self.channel)
        self.stopping = asyncio.Event()

    def _retry(self, what: str) -> Callable[[grpc.StatusCode], None]:
        return lambda code: self.ledger.retries.update([f"{what} {code.name}"])

    async def task_worker(self, worker: int) -> None:
        rng = random.Random(worker)
        while not self.stopping.is_set():
            task_id = f"ch-{worker}-{uuid.uuid4().hex[:10]}"
            request = pb.SubmitTaskRequest(id=task_id, payload={
                "command": task_command(task_id, rng.uniform(*self.task_seconds))})
            setattr(request, "class", "cpu_short")
            began = time.monotonic()
            try:
                answer: pb.SubmitTaskResponse = await retrying(
                    functools.partial(self.stub.SubmitTask, request, timeout=RPC_SECONDS),
                    deadline=began + 120, on_retry=self._retry("SubmitTask"))
            except grpc.aio.AioRpcError as exc:
                self.ledger.errors.append(f"SubmitTask {task_id}: {exc.code().name} "
                                          f"{exc.details()}")
                continue
            if not answer.success:
                self.ledger.errors.append(f"SubmitTask {task_id}: {answer.error}")
                continue
            self.ledger.acked_tasks[task_id] = time.monotonic() - began
            await self.follow_task(task_id, deadline=time.monotonic() + 300)

    async def follow_task(self, task_id: str, *, deadline: float) -> str:
        """Until the task is terminal (StreamTaskResults ends then), across restarts."""
        while True:
            try:
                call = self.stub.StreamTaskResults(pb.StreamTaskResultsRequest(
                    task_ids=[task_id], include_completed=True), timeout=120)
                status = ""
                async for result in call:
                    status = result.status
                if status in TERMINAL:
                    return status
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in TRANSIENT:
                    self.ledger.errors.append(f"StreamTaskResults {task_id}: "
                                              f"{exc.code().name} {exc.details()}")
                    return ""
                self.ledger.retries.update([f"StreamTaskResults {exc.code().name}"])
            if time.monotonic() > deadline:
                return ""
            await asyncio.sleep(0.2)

    async def workflow_worker(self) -> None:
        n = 0
        while not self.stopping.is_set():
            n += 1
            key = f"chaos-run-{n}-{uuid.uuid4().hex[:6]}"
            request = pb.StartWorkflowRunRequest(workflow_id=self.workflow_id,
                                                 idempotency_key=key)
            try:
                answer: pb.StartWorkflowRunResponse = await retrying(
                    functools.partial(self.stub.StartWorkflowRun, request,
                                      timeout=RPC_SECONDS),
                    deadline=time.monotonic() + 120, on_retry=self._retry("StartWorkflowRun"))
            except grpc.aio.AioRpcError as exc:
                self.ledger.errors.append(f"StartWorkflowRun {key}: {exc.code().name} "
                                          f"{exc.details()}")
                continue
            self.ledger.acked_runs[key] = answer.run_id
            await self.follow_run(answer.run_id, deadline=time.monotonic() + 300)

    async def follow_run(self, run_id: str, *, deadline: float) -> str:
        while True:
            try:
                status = ""
                call = self.stub.StreamWorkflowStatus(
                    pb.StreamWorkflowStatusRequest(run_id=run_id), timeout=120)
                async for update in call:
                    status = update.status
                if status in RUN_TERMINAL:
                    return status
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in TRANSIENT:
                    self.ledger.errors.append(f"StreamWorkflowStatus {run_id}: "
                                              f"{exc.code().name} {exc.details()}")
                    return ""
            if time.monotonic() > deadline:
                return ""
            await asyncio.sleep(0.2)

    async def close(self) -> None:
        await self.channel.close()


async def create_workflow(stub: orchestrator_pb2_grpc.OrchestratorServiceStub) -> str:
    workflow_id = f"chaos-{uuid.uuid4().hex[:8]}"
    answer = await retrying(lambda: stub.CreateWorkflow(pb.CreateWorkflowRequest(
        id=workflow_id, name="chaos", spec=WORKFLOW_SPEC), timeout=RPC_SECONDS),
        deadline=time.monotonic() + 60)
    assert answer.success, answer.error
    return workflow_id


# -- faults ---------------------------------------------------------------------------------------


def local_dockerd_pid() -> int | None:
    """The pid of the dockerd serving the default local socket, or None (a remote engine, or
    none we can see): only that one may be paused."""
    if os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock") != \
            "unix:///var/run/docker.sock":
        return None
    try:
        pid = int(Path("/var/run/docker.pid").read_text().strip())
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except (OSError, ValueError):
        return None
    return pid if comm == "dockerd" else None


async def pause_dockerd(seconds: float) -> bool:
    """SIGSTOP the local dockerd for `seconds`, then SIGCONT. A detached `sleep; kill -CONT`
    is started first, so the engine resumes even if this process dies in between."""
    pid = local_dockerd_pid()
    if pid is None:
        return False
    await asyncio.create_subprocess_exec(
        "sh", "-c", f"sleep {seconds:.1f}; kill -CONT {pid}", start_new_session=True,
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.kill(pid, signal.SIGSTOP)
    try:
        await asyncio.sleep(seconds)
    finally:
        os.kill(pid, signal.SIGCONT)
    return True


async def killer(cluster: Cluster, ledger: Ledger, stopping: asyncio.Event, *,
                 interval: tuple[float, float], docker_pause: float, seed: int = 1) -> None:
    """SIGKILL one daemon at random every `interval` seconds and start it again; once, a third
    of the way in, pause the local dockerd for `docker_pause` seconds (0: never)."""
    rng = random.Random(seed)
    paused = docker_pause <= 0
    began = time.monotonic()
    while not stopping.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), rng.uniform(*interval))
        if stopping.is_set():
            return
        if not paused and time.monotonic() - began > 20:
            paused = True
            if await pause_dockerd(docker_pause):
                ledger.docker_pauses += 1
            continue
        which = rng.choice(("orchestrator", "env-manager"))
        await cluster.restart(which)
        ledger.kills[which] += 1


# -- the verdict ----------------------------------------------------------------------------------


@dataclass
class Verdict:
    acked_tasks: int
    lost_tasks: list[str]
    ran_twice: list[str]
    failed_tasks: dict[str, str]
    acked_runs: int
    lost_runs: list[str]
    duplicated_runs: list[str]
    run_statuses: Counter[str]
    task_statuses: Counter[str]

    def lines(self) -> list[str]:
        return [
            f"acknowledged tasks          {self.acked_tasks}",
            f"  lost                      {len(self.lost_tasks)}  (goal 0) {self.lost_tasks[:5]}",
            f"  command ran twice         {len(self.ran_twice)}  (goal 0) {self.ran_twice[:5]}",
            f"  statuses                  {dict(self.task_statuses)}",
            f"acknowledged workflow runs  {self.acked_runs}",
            f"  lost                      {len(self.lost_runs)}  (goal 0) {self.lost_runs[:5]}",
            f"  duplicated                {len(self.duplicated_runs)}  (goal 0) "
            f"{self.duplicated_runs[:5]}",
            f"  statuses                  {dict(self.run_statuses)}",
        ] + [f"  failed task {k}: {v[:200]}" for k, v in list(self.failed_tasks.items())[:5]]


async def verdict(cluster: Cluster, ledger: Ledger, load: Load, *,
                  drain_seconds: float = 300) -> Verdict:
    """With both daemons running: wait for every acknowledged task and run to end, then count."""
    stub = load.stub
    deadline = time.monotonic() + drain_seconds
    statuses: dict[str, str] = {}
    failed: dict[str, str] = {}
    lost: list[str] = []
    for task_id in ledger.acked_tasks:
        status = await load.follow_task(task_id, deadline=deadline)
        try:
            found = await retrying(lambda t=task_id: stub.GetTaskStatus(  # type: ignore[misc]
                pb.GetTaskStatusRequest(task_id=t), timeout=RPC_SECONDS), deadline=deadline)
        except grpc.aio.AioRpcError as exc:
            lost.append(f"{task_id} ({exc.code().name})")
            continue
        status = found.status
        statuses[task_id] = status
        if status not in TERMINAL:
            lost.append(f"{task_id} (still {status})")
        elif status == "failed":
            failed[task_id] = found.error
    markers = cluster.markers()
    for task_id, status in statuses.items():
        if status == "completed" and markers[f"start {task_id}"] == 0:
            lost.append(f"{task_id} (completed, command never started)")
    twice = sorted(line.split(" ", 1)[1] for line, count in markers.items()
                   if line.startswith("start ") and count > 1)
    lost_runs: list[str] = []
    duplicated: list[str] = []
    run_statuses: Counter[str] = Counter()
    for key, run_id in ledger.acked_runs.items():
        try:
            again = await retrying(lambda k=key: stub.StartWorkflowRun(  # type: ignore[misc]
                pb.StartWorkflowRunRequest(workflow_id=load.workflow_id, idempotency_key=k),
                timeout=RPC_SECONDS), deadline=deadline)
        except grpc.aio.AioRpcError as exc:
            lost_runs.append(f"{key} ({exc.code().name})")
            continue
        if again.run_id != run_id or again.created:
            duplicated.append(f"{key}: {run_id} then {again.run_id} created={again.created}")
        status = await load.follow_run(run_id, deadline=deadline)
        run_statuses[status or "not ended"] += 1
        if status not in RUN_TERMINAL:
            lost_runs.append(f"{key} ({run_id} not ended)")
        for step in WORKFLOW_STEPS:
            if markers[f"start wf-{run_id}-{step}"] > 1:
                duplicated.append(f"{run_id} step {step} ran "
                                  f"{markers[f'start wf-{run_id}-{step}']} times")
    return Verdict(len(ledger.acked_tasks), lost, twice, failed, len(ledger.acked_runs),
                   lost_runs, duplicated, run_statuses, Counter(statuses.values()))


@dataclass
class ChaosResult:
    ledger: Ledger
    verdict: Verdict
    seconds: float

    def text(self) -> str:
        kills = ", ".join(f"{k} {v}" for k, v in sorted(self.ledger.kills.items()))
        lines = [f"chaos: {self.seconds:.0f} s, SIGKILLs: {kills or 'none'}, dockerd paused "
                 f"{self.ledger.docker_pauses} time(s)",
                 *self.verdict.lines(),
                 f"transient errors retried    {dict(self.ledger.retries)}",
                 f"other errors                {len(self.ledger.errors)} "
                 f"{self.ledger.errors[:5]}"]
        return "\n".join(lines)


async def run_chaos(workdir: Path, *, duration: float, workers: int = 6,
                    interval: tuple[float, float] = (5.0, 10.0), docker_pause: float = 15.0,
                    task_seconds: tuple[float, float] = (0.2, 1.5), seed: int = 1,
                    progress: Callable[[str], None] | None = None) -> ChaosResult:
    ledger = Ledger()
    began = time.monotonic()
    async with cluster(workdir, concurrency=4) as found:
        bootstrap = grpc.aio.insecure_channel(found.orchestrator_addr)
        workflow_id = await create_workflow(orchestrator_pb2_grpc.OrchestratorServiceStub(
            bootstrap))
        await bootstrap.close()
        load = Load(found, ledger, task_seconds=task_seconds, workflow_id=workflow_id)
        stopping = load.stopping
        jobs = [asyncio.ensure_future(load.task_worker(n)) for n in range(workers)]
        jobs.append(asyncio.ensure_future(load.workflow_worker()))
        chaos = asyncio.ensure_future(killer(found, ledger, stopping, interval=interval,
                                             docker_pause=docker_pause, seed=seed))
        try:
            end = began + duration
            while time.monotonic() < end and not chaos.done():
                await asyncio.wait({chaos}, timeout=min(15.0, max(0.0, end - time.monotonic())))
                if progress is not None:
                    progress(f"{time.monotonic() - began:.0f} s: {len(ledger.acked_tasks)} "
                             f"tasks, {len(ledger.acked_runs)} runs acknowledged, kills "
                             f"{dict(ledger.kills)}")
            stopping.set()
            await chaos  # raises if a restart failed
            # Both daemons up (the last kill restarted its daemon); let the workers finish.
            await asyncio.wait_for(asyncio.gather(*jobs), timeout=400)
            result = await verdict(found, ledger, load)
        finally:
            stopping.set()
            for job in [*jobs, chaos]:
                job.cancel()
            await asyncio.gather(*jobs, chaos, return_exceptions=True)
            await load.close()
    return ChaosResult(ledger, result, time.monotonic() - began)


__all__ = ["ChaosResult", "Cluster", "Ledger", "Load", "cluster", "retrying", "run_chaos",
           "task_command"]
