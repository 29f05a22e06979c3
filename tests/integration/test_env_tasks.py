"""ExecuteTask and GetResourceAvailability against the real Docker engine.

Every test runs under its own stack name, so the containers it makes (and only those) carry
STACK=<that name>; the fixture removes whatever is left with that label, and tests that promise a
removal check it themselves before that.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
import time
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiodocker
import pytest
import pytest_asyncio
from agent_infra.env_manager import labels
from agent_infra.env_manager.docker.engine import DockerEngine
from agent_infra.env_manager.resources import HardwareProbe, availability
from agent_infra.env_manager.settings import RetrySettings
from agent_infra.env_manager.tasks.container import container_name
from agent_infra.env_manager.tasks.runner import TaskOutcome, TaskRunner
from agent_infra.env_manager.tasks.store import TaskStore
from agent_infra.env_manager.tasks.workloads import TaskSettings, WorkloadClass
from agent_infra.runtime.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    Unavailable,
)

from tests.docker_support import TEST_IMAGE

REPO = Path(__file__).resolve().parents[2]
WAIT_S = 30.0
CLASS = "cpu_short"


def busybox_class(**overrides: Any) -> WorkloadClass:
    config: dict[str, Any] = {"image": TEST_IMAGE, "concurrency": 4, "default_timeout": 30,
                              "max_timeout": 60}
    return WorkloadClass(**{**config, **overrides})


async def eventually(check: Callable[[], Awaitable[bool]], what: str,
                     timeout: float = WAIT_S) -> None:
    """Wait for a condition the engine offers no event for, bounded in time."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


class Harness:
    def __init__(self, docker: aiodocker.Docker, tmp_path: Path) -> None:
        self.docker = docker
        self.tmp_path = tmp_path
        self.stack = f"t-{uuid.uuid4().hex[:10]}"
        self.store_path = tmp_path / "state" / "tasks.sqlite3"
        self.engines: list[DockerEngine] = []
        self.stores: list[TaskStore] = []
        self.runners: list[TaskRunner] = []

    async def runner(self, classes: dict[str, WorkloadClass] | None = None,
                     settings: TaskSettings | None = None) -> TaskRunner:
        """A runner as a fresh env-manager process would make it: own engine client and store."""
        engine = DockerEngine(os.environ.get("DOCKER_HOST") or None, RetrySettings())
        settings = settings or TaskSettings()
        store = await TaskStore.open(self.store_path, retention=settings.retention)
        self.engines.append(engine)
        self.stores.append(store)
        runner = TaskRunner(engine, self.stack, classes or {CLASS: busybox_class()}, settings,
                            store)
        self.runners.append(runner)
        return runner

    async def containers(self, status: str | None = None, **extra: str) -> list[dict[str, Any]]:
        filters = labels.label_filter(**{labels.STACK: self.stack, **extra})
        if status:
            filters["status"] = [status]
        found = await self.docker.containers.list(all=True, filters=filters)
        return [container._container for container in found]

    async def task_containers(self, task_id: str, status: str | None = None) -> list[Any]:
        return await self.containers(status, **{labels.TASK_ID: task_id})

    async def wait_running(self, task_id: str) -> dict[str, Any]:
        async def running() -> bool:
            return bool(await self.task_containers(task_id, "running"))
        await eventually(running, f"the container of {task_id} to run")
        found: dict[str, Any] = (await self.task_containers(task_id, "running"))[0]
        return found

    async def wait_gone(self, task_id: str) -> None:
        async def gone() -> bool:
            return not await self.task_containers(task_id)
        await eventually(gone, f"the container of {task_id} to be removed")

    async def close(self) -> None:
        for runner in self.runners:
            await runner.aclose()
        for container in await self.docker.containers.list(
                all=True, filters=labels.label_filter(**{labels.STACK: self.stack})):
            await container.delete(force=True, v=True)
        for engine in self.engines:
            await engine.close()
        for store in self.stores:
            await store.close()


@pytest_asyncio.fixture
async def harness(docker: aiodocker.Docker, tmp_path: Path) -> AsyncIterator[Harness]:
    h = Harness(docker, tmp_path)
    try:
        yield h
    finally:
        await h.close()


def task_id() -> str:
    return f"task:{uuid.uuid4().hex[:12]}"


async def run(runner: TaskRunner, command: str, *, tid: str | None = None, timeout: int = 0,
              workload_class: str = CLASS, **payload: str) -> TaskOutcome:
    return await runner.execute(tid or task_id(), workload_class, {"command": command, **payload},
                                timeout)


# -- results --------------------------------------------------------------------------------

async def test_success_with_stdout(harness: Harness) -> None:
    runner = await harness.runner()
    tid = task_id()
    before = time.time()
    outcome = await run(runner, '["echo", "hello world"]', tid=tid)
    assert outcome.success and outcome.error == ""
    result = outcome.result
    assert result["stdout"] == "hello world\n" and result["stderr"] == ""
    assert result["exit_code"] == "0"
    assert result["stdout_truncated"] == result["stderr_truncated"] == "false"
    assert result["timed_out"] == "false" and result["cached"] == "false"
    assert result["image"] == TEST_IMAGE and result["workload_class"] == CLASS
    assert len(result["container_id"]) == 64
    assert before - 1 <= float(result["started_at"]) <= float(result["finished_at"]) <= time.time()
    assert float(result["duration_ms"]) >= 0 and outcome.latency_ms > 0
    assert await harness.task_containers(tid) == []


async def test_stderr_is_told_apart_from_stdout(harness: Harness) -> None:
    runner = await harness.runner()
    outcome = await run(runner, "echo out; echo err >&2; echo out2")
    assert outcome.result["stdout"] == "out\nout2\n"
    assert outcome.result["stderr"] == "err\n"


async def test_non_zero_exit_is_a_failure_with_the_code(harness: Harness) -> None:
    runner = await harness.runner()
    tid = task_id()
    outcome = await run(runner, "echo partial; exit 7", tid=tid)
    assert not outcome.success
    assert outcome.error == "exit code 7"
    assert outcome.result["exit_code"] == "7" and outcome.result["stdout"] == "partial\n"
    assert await harness.task_containers(tid) == []


async def test_timeout_kills_the_container_and_says_so(harness: Harness) -> None:
    runner = await harness.runner()
    tid = task_id()
    began = time.monotonic()
    outcome = await run(runner, "echo started; sleep 60", tid=tid, timeout=1)
    assert time.monotonic() - began < 10
    assert not outcome.success
    assert outcome.error.startswith("timed out after 1 s")
    assert outcome.result["timed_out"] == "true" and outcome.result["timeout_s"] == "1"
    assert outcome.result["timeout_capped"] == "false"
    assert outcome.result["exit_code"] == "137"  # SIGKILL
    assert outcome.result["stdout"] == "started\n"
    assert await harness.task_containers(tid) == []


async def test_timeout_is_capped_at_the_class_max(harness: Harness) -> None:
    runner = await harness.runner({CLASS: busybox_class(default_timeout=1, max_timeout=1)})
    outcome = await run(runner, "sleep 60", timeout=3600)
    assert outcome.result["timed_out"] == "true" and outcome.result["timeout_s"] == "1"
    assert outcome.result["timeout_capped"] == "true"
    assert "capped at the class's max_timeout" in outcome.error


async def test_stdin_is_fed_then_closed(harness: Harness) -> None:
    runner = await harness.runner()
    outcome = await run(runner, '["cat"]', stdin="line one\nline two\n\x10\x11 raw")
    assert outcome.success
    assert outcome.result["stdout"] == "line one\nline two\n\x10\x11 raw"
    big = "x" * (2 * 1024 * 1024)
    counted = await run(runner, "wc -c", stdin=big)
    assert counted.result["stdout"].strip() == str(len(big))
    empty = await run(runner, "wc -c", stdin="")
    assert empty.result["stdout"].strip() == "0"


async def test_unread_stdin_does_not_hang(harness: Harness) -> None:
    runner = await harness.runner()
    outcome = await run(runner, '["echo", "ignored it"]', stdin="y" * (4 * 1024 * 1024))
    assert outcome.success and outcome.result["stdout"] == "ignored it\n"


async def test_workdir_env_and_image_default_command(harness: Harness) -> None:
    runner = await harness.runner({CLASS: busybox_class(env={"FROM_CLASS": "c", "SHARED": "c"})})
    here = await run(runner, "pwd", workdir="/tmp")
    assert here.result["stdout"] == "/tmp\n"
    env = await run(runner, 'echo "$FROM_CLASS $SHARED $FROM_TASK"',
                    env='{"SHARED": "task", "FROM_TASK": "t w"}')
    assert env.result["stdout"] == "c task t w\n"
    # No command: the image's own CMD (busybox: sh), which reads the script from stdin.
    default = await runner.execute(task_id(), CLASS, {"stdin": "echo from default cmd"}, 0)
    assert default.result["stdout"] == "from default cmd\n"


async def test_oversized_output_is_truncated_with_bounded_memory(harness: Harness) -> None:
    limit = 1000
    runner = await harness.runner(settings=TaskSettings(output_limit_bytes=limit))
    total = 30_000_000
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        outcome = await run(runner, f"yes 0123456789 | head -c {total}; echo tail >&2")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert outcome.success
    assert outcome.result["stdout"] == ("0123456789\n" * 100)[:limit]
    assert outcome.result["stdout_truncated"] == "true"
    assert outcome.result["stdout_bytes"] == str(total)
    assert outcome.result["stderr"] == "tail\n" and outcome.result["stderr_truncated"] == "false"
    assert peak < 8 * 1024 * 1024, f"peak traced memory {peak} bytes for {total} bytes of output"


# -- refusals -------------------------------------------------------------------------------

async def test_disallowed_image_is_refused_before_anything_runs(harness: Harness) -> None:
    runner = await harness.runner()
    with pytest.raises(InvalidArgument, match=r"payload\.image 'alpine:latest' is not allowed"):
        await run(runner, "true", image="alpine:latest")
    assert await harness.containers() == []


async def test_missing_image_is_failed_precondition_and_never_pulled(harness: Harness) -> None:
    missing = f"local/never-built-{uuid.uuid4().hex[:8]}:latest"
    runner = await harness.runner({CLASS: busybox_class(allowed_images=[missing])})
    with pytest.raises(FailedPrecondition, match=r"not present on this Docker host.*never pulled"):
        await run(runner, "true", image=missing)
    assert await harness.containers() == []


async def test_unknown_class_and_bad_payloads(harness: Harness) -> None:
    runner = await harness.runner()
    with pytest.raises(InvalidArgument, match=r"workload_class 'gpu' is unknown; known classes: "
                                              r"cpu_short"):
        await run(runner, "true", workload_class="gpu")
    with pytest.raises(InvalidArgument, match="allowed keys: command, image, env, stdin, workdir"):
        await runner.execute(task_id(), CLASS, {"command": "true", "args": "x"}, 0)
    with pytest.raises(InvalidArgument, match=r"payload\.env"):
        await run(runner, "true", env="{not json")
    with pytest.raises(InvalidArgument, match="task_id"):
        await run(runner, "true", tid="../../etc/passwd")
    with pytest.raises(InvalidArgument, match="could not start"):
        await run(runner, '["/no/such/program"]')
    assert await harness.containers() == []


async def test_disabled_class_is_failed_precondition(harness: Harness) -> None:
    runner = await harness.runner({CLASS: busybox_class(), "gpu": busybox_class(concurrency=0)})
    with pytest.raises(FailedPrecondition, match="disabled"):
        await run(runner, "true", workload_class="gpu")


# -- the container itself -------------------------------------------------------------------

async def test_container_is_confined_to_its_class(harness: Harness, tmp_path: Path) -> None:
    granted = tmp_path / "granted"
    granted.mkdir()
    workload = busybox_class(cpus=0.5, memory="64m", mounts=[f"{granted}:/granted:ro"])
    runner = await harness.runner({CLASS: workload})
    tid = task_id()
    execution = asyncio.create_task(run(runner, "ls /granted; sleep 30", tid=tid, timeout=5))
    try:
        found = await harness.wait_running(tid)
        info = await harness.docker.containers.container(found["Id"]).show()
    finally:
        execution.cancel()
    host = info["HostConfig"]
    assert info["Name"] == "/" + container_name(harness.stack, tid)
    assert host["Privileged"] is False and host["AutoRemove"] is False
    assert host["NetworkMode"] == "none"
    assert host["Binds"] == [f"{granted}:/granted:ro"]
    assert [m["Source"] for m in info["Mounts"]] == [str(granted)]
    assert host["NanoCpus"] == 500_000_000 and host["Memory"] == 64 * 1024 * 1024
    assert info["Config"]["Labels"][labels.KIND] == labels.KIND_TASK
    assert info["Config"]["Labels"][labels.TASK_ID] == tid
    assert info["Config"]["Labels"][labels.WORKLOAD_CLASS] == CLASS


async def test_container_is_removed_when_the_caller_is_cancelled(harness: Harness) -> None:
    runner = await harness.runner()
    tid = task_id()
    caller = asyncio.create_task(run(runner, "sleep 1; echo finished", tid=tid))
    await harness.wait_running(tid)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    # The run outlives its caller (a retry must find it), then stores its result and is removed.
    await harness.wait_gone(tid)

    async def ended() -> bool:  # the removal comes just before the execution's end
        return tid not in runner._inflight
    await eventually(ended, "the execution to end")
    # The retry is the same request (a different one with the id is refused:
    # test_env_task_security.py).
    again = await run(runner, "sleep 1; echo finished", tid=tid)
    assert again.result["cached"] == "true" and again.result["stdout"] == "finished\n"


# -- once per task id -----------------------------------------------------------------------

def writable_by_tasks(folder: Path) -> Path:
    """A host folder tasks (uid 65534 by default, not this test's uid) can write into."""
    folder.mkdir(exist_ok=True)
    folder.chmod(0o777)
    return folder


def counting_class(folder: Path) -> WorkloadClass:
    writable_by_tasks(folder)
    return busybox_class(mounts=[f"{folder}:/count:rw"])


COUNTING = "echo ran >> /count/runs; sleep 1; echo done"


async def test_second_call_while_running_joins_the_same_run(harness: Harness) -> None:
    folder = harness.tmp_path / "count"
    runner = await harness.runner({CLASS: counting_class(folder)})
    tid = task_id()
    first = asyncio.create_task(run(runner, COUNTING, tid=tid))
    await harness.wait_running(tid)
    second = await run(runner, COUNTING, tid=tid)
    first_outcome = await first
    assert first_outcome.success and second.success
    assert first_outcome.result == second.result
    assert second.result["cached"] == "false"
    assert (folder / "runs").read_text() == "ran\n"
    third = await run(runner, COUNTING, tid=tid)
    assert third.result["cached"] == "true"
    assert third.result["container_id"] == first_outcome.result["container_id"]
    assert (folder / "runs").read_text() == "ran\n"
    assert await harness.task_containers(tid) == []


async def test_stored_result_is_returned_by_a_new_runner(harness: Harness) -> None:
    folder = harness.tmp_path / "count"
    first_runner = await harness.runner({CLASS: counting_class(folder)})
    tid = task_id()
    outcome = await run(first_runner, "echo ran >> /count/runs; echo out; exit 3", tid=tid)
    await first_runner.aclose()

    restarted = await harness.runner({CLASS: counting_class(folder)})
    cached = await run(restarted, "echo ran >> /count/runs; echo out; exit 3", tid=tid)
    assert cached.result == {**outcome.result, "cached": "true"}
    assert (cached.success, cached.error) == (False, "exit code 3")
    assert (folder / "runs").read_text() == "ran\n"


async def test_a_task_id_cannot_change_class(harness: Harness) -> None:
    runner = await harness.runner({CLASS: busybox_class(), "cpu_long": busybox_class()})
    tid = task_id()
    await run(runner, "true", tid=tid)
    with pytest.raises(AlreadyExists, match=r"already ran as workload_class 'cpu_short'"):
        await run(runner, "true", tid=tid, workload_class="cpu_long")


async def test_results_past_retention_run_again(harness: Harness) -> None:
    folder = harness.tmp_path / "count"
    runner = await harness.runner({CLASS: counting_class(folder)},
                                  TaskSettings(retention=0.2))
    tid = task_id()
    await run(runner, "echo ran >> /count/runs", tid=tid)
    await asyncio.sleep(0.3)  # the retention window itself is what is under test
    again = await run(runner, "echo ran >> /count/runs", tid=tid)
    assert again.result["cached"] == "false"
    assert (folder / "runs").read_text() == "ran\nran\n"


CRASHING_RUNNER = """
import asyncio, sys
from pathlib import Path
from agent_infra.env_manager.docker.engine import DockerEngine
from agent_infra.env_manager.settings import RetrySettings
from agent_infra.env_manager.tasks.store import TaskStore
from agent_infra.env_manager.tasks.runner import TaskRunner
from agent_infra.env_manager.tasks.workloads import TaskSettings, WorkloadClass

async def main() -> None:
    stack, store_path, folder, task_id = sys.argv[1:5]
    store = await TaskStore.open(Path(store_path), retention=3600)
    workload = WorkloadClass(image="{image}", concurrency=1, mounts=[f"{{folder}}:/count:rw"])
    runner = TaskRunner(DockerEngine(None, RetrySettings()), stack, {{"cpu_short": workload}},
                        TaskSettings(), store)
    await runner.execute(task_id, "cpu_short", {{"command": sys.argv[5]}}, 30)

asyncio.run(main())
"""


async def test_a_restarted_env_manager_attaches_to_the_running_container(
        harness: Harness) -> None:
    folder = writable_by_tasks(harness.tmp_path / "count")
    tid = task_id()
    command = "echo ran >> /count/runs; sleep 2; echo finished; echo warn >&2"
    script = harness.tmp_path / "crashing_runner.py"
    script.write_text(textwrap.dedent(CRASHING_RUNNER.format(image=TEST_IMAGE)))
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(script), harness.stack, str(harness.store_path), str(folder), tid,
        command, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        running = await harness.wait_running(tid)
    finally:
        # The first env-manager dies without any cleanup, as under kill -9.
        process.send_signal(signal.SIGKILL)
        await process.wait()
    assert await harness.task_containers(tid, "running")

    restarted = await harness.runner({CLASS: counting_class(folder)})
    outcome = await run(restarted, command, tid=tid, timeout=30)
    assert outcome.success
    assert outcome.result["container_id"] == running["Id"]
    assert outcome.result["stdout"] == "finished\n" and outcome.result["stderr"] == "warn\n"
    assert (folder / "runs").read_text() == "ran\n"
    assert await harness.task_containers(tid) == []
    cached = await run(restarted, command, tid=tid)
    assert cached.result["cached"] == "true" and cached.result["container_id"] == running["Id"]


async def test_recover_adopts_containers_left_by_a_shut_down_runner(harness: Harness) -> None:
    folder = harness.tmp_path / "count"
    first = await harness.runner({CLASS: counting_class(folder)})
    tid = task_id()
    caller = asyncio.create_task(run(first, "echo ran >> /count/runs; sleep 1; echo done",
                                     tid=tid))
    await harness.wait_running(tid)
    await first.aclose()  # shutdown: stop waiting, leave the container running
    with pytest.raises(Unavailable, match=r"shutting down.*retry will attach"):
        await caller
    assert await harness.task_containers(tid, "running")

    restarted = await harness.runner({CLASS: counting_class(folder)})
    assert await restarted.recover() == 1
    assert await restarted.in_use(CLASS) == 1
    # The orchestrator's retry joins the adopted run.
    outcome = await run(restarted, "echo ran >> /count/runs; sleep 1; echo done", tid=tid)
    assert outcome.success and outcome.result["stdout"] == "done\n"
    assert (folder / "runs").read_text() == "ran\n"
    await harness.wait_gone(tid)


# -- concurrency and availability -----------------------------------------------------------

async def test_concurrency_limit_is_respected(harness: Harness) -> None:
    runner = await harness.runner({CLASS: busybox_class(concurrency=2)})
    hardware = HardwareProbe()
    ids = [task_id() for _ in range(5)]
    calls = [asyncio.create_task(run(runner, "sleep 0.7", tid=tid)) for tid in ids]
    most = 0
    saw_full = None
    while not all(call.done() for call in calls):
        running = len(await harness.containers("running"))
        most = max(most, running)
        if running == 2 and saw_full is None:
            saw_full = await availability(runner, hardware, CLASS)
        await asyncio.sleep(0.05)
    outcomes = [await call for call in calls]
    assert all(outcome.success for outcome in outcomes)
    assert most == 2
    assert saw_full is not None
    assert (saw_full.capacity, saw_full.available) == (2, False)
    assert 1 <= saw_full.in_use <= 2
    idle = await availability(runner, hardware, CLASS)
    assert (idle.available, idle.capacity, idle.in_use) == (True, 2, 0)
    assert idle.hardware.cpu_cores == len(os.sched_getaffinity(0))
    assert idle.hardware.memory_bytes > 0 and idle.hardware.gpus == ()
    assert await harness.containers() == []


async def test_disabled_class_is_never_available(harness: Harness) -> None:
    runner = await harness.runner({CLASS: busybox_class(), "gpu": busybox_class(concurrency=0)})
    gpu = await availability(runner, HardwareProbe(), "gpu")
    assert (gpu.available, gpu.capacity, gpu.in_use) == (False, 0, 0)


async def test_reloaded_concurrency_applies_to_waiting_calls(harness: Harness) -> None:
    runner = await harness.runner({CLASS: busybox_class(concurrency=1)})
    first, second = task_id(), task_id()
    calls = [asyncio.create_task(run(runner, "sleep 2", tid=tid)) for tid in (first, second)]
    await harness.wait_running(first)

    async def queued() -> bool:
        return runner.queued(CLASS) == 1
    await eventually(queued, "the second call to wait for a slot")
    assert not (await availability(runner, HardwareProbe(), CLASS)).available

    runner.reconfigure({CLASS: busybox_class(concurrency=2)}, TaskSettings())
    await harness.wait_running(second)
    assert len(await harness.containers("running")) == 2  # the first is still going
    assert all(outcome.success for outcome in await asyncio.gather(*calls))
