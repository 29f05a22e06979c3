"""The gpu_slurm executor against a real single-node Slurm cluster (scripts/slurm_cluster.sh).

Jobs really go through sbatch, slurmctld and slurmd; the controller is really stopped and
restarted. A cluster that cannot be started fails these tests (AGENT_INFRA_NO_SLURM=1 skips).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from agent_infra.orchestrator.domain import Orchestrator
from agent_infra.orchestrator.executors.protocol import Execution, TransientFailure
from agent_infra.orchestrator.executors.slurm.executor import SlurmExecutor
from agent_infra.orchestrator.executors.slurm.job_files import JobFiles
from agent_infra.orchestrator.executors.slurm.submission import job_name
from agent_infra.orchestrator.model import Task, TaskRequest, TaskState
from agent_infra.orchestrator.settings import OrchestratorSettings, SlurmSettings
from agent_infra.runtime.errors import FailedPrecondition, NotFound
from prometheus_client import CollectorRegistry

from tests.slurm_support import jobs_named, slurm, start_cluster, stop_controller

POLL = 0.2
# Two nodes of a one-node cluster: sbatch accepts the job, which stays PENDING (for a reason
# such as PartitionNodeLimit or PartitionConfig).
IMPOSSIBLE = ["--nodes=2"]


@pytest.fixture(scope="session")
def slurm_cluster() -> float:
    """The cluster, up (started once per session); the seconds starting it took."""
    return start_cluster()


@pytest_asyncio.fixture
async def work_dir(tmp_path: Path) -> Path:
    return tmp_path / "slurm"


@pytest_asyncio.fixture
async def executor(slurm_cluster: float, work_dir: Path) -> AsyncIterator[SlurmExecutor]:
    ex = SlurmExecutor(slurm_settings(), work_dir)
    try:
        yield ex
    finally:
        await ex.close()


def slurm_settings(**overrides: Any) -> SlurmSettings:
    return SlurmSettings.model_validate(
        {"enabled": True, "poll_interval": POLL, "command_timeout": 30, **overrides})


def execution(payload: dict[str, str], timeout: int = 60, execution_id: str = "") -> Execution:
    return Execution(execution_id or f"slurm-test:{uuid.uuid4().hex[:12]}", "gpu_slurm",
                     payload, timeout)


def name_of(ex: Execution, work_dir: Path) -> str:
    return job_name(ex.execution_id, JobFiles.of(work_dir, ex.execution_id).key)


async def wait_running(name: str, timeout: float = 30) -> str:
    """The job id once the job of this name is RUNNING."""
    async with asyncio.timeout(timeout):
        while True:
            out = await asyncio.to_thread(
                slurm, "squeue", "--noheader", f"--name={name}", "--format=%i %T")
            for line in out.splitlines():
                job_id, _, state = line.partition(" ")
                if state.strip() == "RUNNING":
                    return job_id
            await asyncio.sleep(0.1)


async def wait_job_state(job_id: str, state: str, timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while True:
            shown = await asyncio.to_thread(slurm, "scontrol", "show", "job", "-o", job_id)
            if f"JobState={state} " in shown:
                return
            await asyncio.sleep(0.1)


# -- jobs ----------------------------------------------------------------------------------


async def test_job_succeeds_with_stdout(executor: SlurmExecutor, tmp_path: Path) -> None:
    workdir = tmp_path / "run here"
    workdir.mkdir()
    tricky = "it's $HOME; `false` $(false) \"q\""
    ex = execution({
        "command": json.dumps(["sh", "-c", 'printf "%s|%s|" "$1" "$GREETING"; pwd; cat',
                               "sh", tricky]),
        "env": json.dumps({"GREETING": "hello 'world' $(nope)"}),
        "workdir": str(workdir),
        "stdin": "from stdin\n",
    }, execution_id=f"odd:id.with-chars_{uuid.uuid4().hex[:8]}")
    started = time.monotonic()
    outcome = await executor.execute(ex)
    assert outcome.success, outcome
    result = outcome.result
    assert result["stdout"] == f"{tricky}|hello 'world' $(nope)|{workdir}\nfrom stdin\n"
    assert result["state"] == "COMPLETED"
    assert result["exit_code"] == "0"
    assert result["job_id"].isdigit()
    assert result["stdout_truncated"] == "false"
    assert result["timed_out"] == "false"
    assert float(result["duration_ms"]) >= 0
    assert outcome.error == ""
    # The job is named from the id's safe characters plus a hash; files by the hash alone.
    name = name_of(ex, executor._work_dir)
    assert name.startswith("agent-infra-odd_id.with-chars_")
    assert jobs_named(name) == [result["job_id"]]
    assert not any("odd" in p.name for p in executor._work_dir.iterdir())
    print(f"one job end to end: {time.monotonic() - started:.2f}s")


async def test_nonzero_exit_is_a_failure_with_its_code(executor: SlurmExecutor) -> None:
    outcome = await executor.execute(execution({"command": "echo out; echo err >&2; exit 3"}))
    assert not outcome.success
    assert outcome.result["exit_code"] == "3"
    assert outcome.result["state"] == "FAILED"
    assert outcome.result["stdout"] == "out\n"
    assert outcome.result["stderr"] == "err\n"
    assert outcome.error == f"exit code 3 (Slurm job {outcome.result['job_id']})"


async def test_output_is_capped(slurm_cluster: float, work_dir: Path) -> None:
    ex = SlurmExecutor(slurm_settings(output_limit_bytes=1024), work_dir)
    outcome = await ex.execute(execution({"command": "head -c 5000 /dev/zero | tr '\\0' x"}))
    assert outcome.success, outcome
    assert outcome.result["stdout"] == "x" * 1024
    assert outcome.result["stdout_truncated"] == "true"
    assert outcome.result["stdout_bytes"] == "5000"


async def test_timeout_stops_the_command(executor: SlurmExecutor) -> None:
    started = time.monotonic()
    outcome = await executor.execute(execution({"command": "echo begun; sleep 60"}, timeout=2))
    elapsed = time.monotonic() - started
    assert not outcome.success
    assert outcome.result["timed_out"] == "true"
    assert outcome.result["stdout"] == "begun\n"
    assert outcome.error.startswith("timed out after 2 s")
    assert elapsed < 20, f"a 2 s timeout took {elapsed:.1f}s"


async def test_cancelled_job_fails(executor: SlurmExecutor, work_dir: Path) -> None:
    ex = execution({"command": "sleep 60"})
    run = asyncio.create_task(executor.execute(ex))
    job_id = await wait_running(name_of(ex, work_dir))
    await asyncio.to_thread(slurm, "scancel", job_id)
    outcome = await asyncio.wait_for(run, 30)
    assert not outcome.success
    assert outcome.result["state"] == "CANCELLED"
    assert outcome.result["job_id"] == job_id
    assert outcome.error.startswith(f"Slurm job {job_id} was cancelled")


async def test_cancel_stops_the_job(executor: SlurmExecutor, work_dir: Path) -> None:
    ex = execution({"command": "sleep 60"})
    run = asyncio.create_task(executor.execute(ex))
    job_id = await wait_running(name_of(ex, work_dir))
    # What the scheduler does on CancelTask: stop following, then cancel on the backend.
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    await executor.cancel(ex.execution_id, "gpu_slurm")
    await wait_job_state(job_id, "CANCELLED")


async def test_gpus_the_cluster_lacks_are_refused(executor: SlurmExecutor) -> None:
    outcome = await executor.execute(execution({"command": "true", "gpus": "1"}))
    assert not outcome.success
    assert outcome.result["state"] == "REFUSED"
    assert outcome.error.startswith("sbatch refused the job:")
    assert "gres" in outcome.error.lower()


async def test_job_pending_past_its_timeout_is_cancelled(slurm_cluster: float,
                                                        work_dir: Path) -> None:
    executor = SlurmExecutor(slurm_settings(sbatch_args=IMPOSSIBLE, pending_timeout=2), work_dir)
    started = time.monotonic()
    outcome = await executor.execute(execution({"command": "echo never"}, timeout=2))
    elapsed = time.monotonic() - started
    assert not outcome.success
    job_id = outcome.result["job_id"]
    assert re.match(rf"never started: Slurm job {job_id} was still PENDING \(Partition\w+\) "
                    r"after \d+ s", outcome.error), outcome
    assert outcome.error.endswith("(slurm.pending_timeout 2 s); it was cancelled")
    assert outcome.result["never_started"] == "true"
    assert outcome.result["state"] == "CANCELLED"
    assert outcome.result["stdout"] == ""
    await wait_job_state(job_id, "CANCELLED")
    assert 2 <= elapsed < 20, f"a 2 s pending limit took {elapsed:.1f}s"


# -- re-dispatch: one execution, one job ---------------------------------------------------


async def dispatch_and_crash(ex: Execution, work_dir: Path) -> str:
    """An orchestrator dispatches, then dies while following the running job: its job id."""
    first = SlurmExecutor(slurm_settings(), work_dir)
    run = asyncio.create_task(first.execute(ex))
    job_id = await wait_running(name_of(ex, work_dir))
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    return job_id


@pytest.mark.parametrize("lost_record", [False, True], ids=["recorded", "record-lost"])
async def test_redispatch_attaches_to_the_running_job(slurm_cluster: float, work_dir: Path,
                                                      lost_record: bool) -> None:
    ex = execution({"command": "sleep 2; echo done once"})
    job_id = await dispatch_and_crash(ex, work_dir)
    files = JobFiles.of(work_dir, ex.execution_id)
    if lost_record:
        # The orchestrator died between sbatch answering and the job id being written down.
        files.job_record.unlink()
    restarted = SlurmExecutor(slurm_settings(), work_dir)
    outcome = await restarted.execute(ex)
    assert outcome.success, outcome
    assert outcome.result["job_id"] == job_id
    assert outcome.result["stdout"] == "done once\n"
    # Once more after the end (the scheduler died before storing the result): same job.
    again = await SlurmExecutor(slurm_settings(), work_dir).execute(ex)
    assert again.result["job_id"] == job_id and again.success
    assert jobs_named(name_of(ex, work_dir)) == [job_id]


# -- controller outages --------------------------------------------------------------------


async def test_controller_down_is_transient_and_waited_for(executor: SlurmExecutor,
                                                          work_dir: Path) -> None:
    ex = execution({"command": "echo after the outage"})
    await asyncio.to_thread(stop_controller)
    try:
        started = time.monotonic()
        with pytest.raises(TransientFailure, match="Slurm controller"):
            await executor.execute(ex)
        assert time.monotonic() - started < 5, "an unreachable controller should be seen at once"
        health = await executor.health()
        assert health["slurm"].startswith("UNAVAILABLE"), health
        waiter = asyncio.create_task(executor.wait_until_available("gpu_slurm"))
        await asyncio.sleep(2 * POLL + 0.5)
        assert not waiter.done(), "dispatching must wait while the controller is down"
    finally:
        await asyncio.to_thread(start_cluster)
    await asyncio.wait_for(waiter, 30)
    assert (await executor.health()) == {"slurm": "SERVING"}
    outcome = await executor.execute(ex)
    assert outcome.success, outcome
    assert outcome.result["stdout"] == "after the outage\n"
    assert jobs_named(name_of(ex, work_dir)) == [outcome.result["job_id"]]


async def test_job_survives_a_controller_outage_while_followed(executor: SlurmExecutor,
                                                               work_dir: Path) -> None:
    ex = execution({"command": "sleep 3; echo survived"})
    run = asyncio.create_task(executor.execute(ex))
    job_id = await wait_running(name_of(ex, work_dir))
    await asyncio.to_thread(stop_controller)
    try:
        await asyncio.sleep(4)  # the job ends while nobody can ask about it
        assert not run.done()
    finally:
        await asyncio.to_thread(start_cluster)
    outcome = await asyncio.wait_for(run, 60)
    assert outcome.success, outcome
    assert outcome.result["job_id"] == job_id
    assert outcome.result["stdout"] == "survived\n"


# -- through the orchestrator --------------------------------------------------------------


def orchestrator_settings(tmp_path: Path, slurm_enabled: bool) -> OrchestratorSettings:
    return OrchestratorSettings.model_validate({
        "server": {"grpc_addr": "127.0.0.1:1", "http_addr": "127.0.0.1:2"},
        "store": {"data_dir": str(tmp_path / "data")},
        "classes": {"cpu_short": {"concurrency": 1},
                    "gpu_slurm": {"concurrency": 2, "default_timeout": 60}},
        # Nothing listens there: env-manager is not needed for gpu_slurm.
        "env_managers": [{"address": "127.0.0.1:9"}],
        "dispatch": {"retry_initial": "10ms", "retry_max": "50ms"},
        "slurm": {"enabled": slurm_enabled, "poll_interval": POLL},
    })


async def wait_terminal(orch: Orchestrator, *task_ids: str) -> list[Task]:
    done: dict[str, Task] = {}
    async with asyncio.timeout(60):
        async for task in orch.watch_tasks(list(task_ids), include_completed=True):
            if task.status.terminal:
                done[task.id] = task
    return [done[t] for t in task_ids]


async def test_orchestrator_runs_gpu_slurm_on_slurm(slurm_cluster: float,
                                                    tmp_path: Path) -> None:
    orch = await Orchestrator.open(orchestrator_settings(tmp_path, True), CollectorRegistry())
    try:
        ok, bad = f"slurm-ok-{uuid.uuid4().hex[:8]}", f"slurm-bad-{uuid.uuid4().hex[:8]}"
        await orch.scheduler.submit(TaskRequest(ok, "gpu_slurm",
                                                {"command": '["echo", "from slurm"]'}))
        await orch.scheduler.submit(TaskRequest(bad, "gpu_slurm", {"command": "exit 7"}))
        done, failed = await wait_terminal(orch, ok, bad)
        assert done.status is TaskState.COMPLETED, done.error
        assert done.result["stdout"] == "from slurm\n"
        assert done.result["job_id"].isdigit()
        assert failed.status is TaskState.FAILED
        assert failed.error.startswith("exit code 7 (Slurm job ")
        assert failed.result["exit_code"] == "7"
        assert (tmp_path / "data" / "slurm").is_dir()  # the default work dir
        health = await orch.health()
        assert health["slurm"] == "SERVING"
        assert health["store"] == "SERVING"
        assert any(key.startswith("env-manager ") for key in health)
        assert orch.executor.supports("cpu_short") == ""
    finally:
        await orch.close()


async def test_orchestrator_cancel_task_cancels_the_slurm_job(slurm_cluster: float,
                                                              tmp_path: Path) -> None:
    settings = orchestrator_settings(tmp_path, True)
    orch = await Orchestrator.open(settings, CollectorRegistry())
    try:
        task_id = f"slurm-cancel-{uuid.uuid4().hex[:8]}"
        await orch.scheduler.submit(TaskRequest(task_id, "gpu_slurm", {"command": "sleep 60"}))
        work_dir = (settings.store.data_dir / "slurm").absolute()
        name = job_name(task_id, JobFiles.of(work_dir, task_id).key)
        job_id = await wait_running(name)
        cancelled = await orch.scheduler.cancel(task_id)
        assert cancelled.status is TaskState.CANCELLED
        await wait_job_state(job_id, "CANCELLED")
    finally:
        await orch.close()


async def test_orchestrator_reload_applies_slurm_settings(slurm_cluster: float,
                                                         tmp_path: Path) -> None:
    settings = orchestrator_settings(tmp_path, True)
    orch = await Orchestrator.open(settings, CollectorRegistry())
    try:
        in_flight, stuck = f"slurm-on-{uuid.uuid4().hex[:8]}", f"slurm-stuck-{uuid.uuid4().hex[:8]}"
        await orch.scheduler.submit(TaskRequest(in_flight, "gpu_slurm",
                                                {"command": "sleep 3; echo carried on"}))
        work_dir = (settings.store.data_dir / "slurm").absolute()
        running_id = await wait_running(job_name(in_flight, JobFiles.of(work_dir, in_flight).key))

        # What SIGHUP does with a changed [slurm]: new jobs get the new sbatch arguments (here,
        # ones no job of this cluster can start with) and pending limit; the job in flight
        # carries on.
        orch.reconfigure(settings.model_copy(update={"slurm": settings.slurm.model_copy(
            update={"sbatch_args": IMPOSSIBLE, "poll_interval": 0.3, "pending_timeout": 3.0})}))
        await orch.scheduler.submit(TaskRequest(stuck, "gpu_slurm", {"command": "echo never"},
                                                timeout_seconds=3))
        done, failed = await wait_terminal(orch, in_flight, stuck)
        assert done.status is TaskState.COMPLETED, done.error
        assert done.result["job_id"] == running_id
        assert done.result["stdout"] == "carried on\n"
        assert failed.status is TaskState.FAILED
        assert failed.error.startswith(f"never started: Slurm job {failed.result['job_id']} was "
                                       "still PENDING (Partition"), failed.error
        assert failed.result["never_started"] == "true"
        await wait_job_state(failed.result["job_id"], "CANCELLED")

        # Turning Slurm off needs a restart: refused, and the running [slurm] kept whole.
        orch.reconfigure(orchestrator_settings(tmp_path, False))
        assert orch.settings.slurm.enabled and orch.settings.slurm.sbatch_args == IMPOSSIBLE
        assert orch.executor.supports("gpu_slurm") == ""
    finally:
        await orch.close()


async def test_orchestrator_without_slurm_refuses_gpu_slurm(tmp_path: Path) -> None:
    orch = await Orchestrator.open(orchestrator_settings(tmp_path, False), CollectorRegistry())
    try:
        with pytest.raises(FailedPrecondition,
                           match="needs a Slurm executor and none is configured"):
            await orch.scheduler.submit(TaskRequest("no-slurm", "gpu_slurm",
                                                    {"command": "true"}))
        with pytest.raises(NotFound):
            await orch.scheduler.get("no-slurm")  # refused, so never stored
        assert orch.executor.supports("cpu_short") == ""
    finally:
        await orch.close()
