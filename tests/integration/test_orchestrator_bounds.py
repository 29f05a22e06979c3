"""Issue 10, finding 10 (orchestrator side): memory and disk stay bounded.

Pending payloads live in the SQLite store until dispatch, not in the daemon's memory; a results
stream nobody reads is dropped at its bound instead of buffering every result; finished tasks
older than the retention period are deleted, but never one a live workflow run refers to.
"""

from __future__ import annotations

import asyncio
import gc
import json
import time
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from agent_infra.orchestrator import domain, tasks_repo
from agent_infra.orchestrator.domain import Orchestrator
from agent_infra.orchestrator.executors.in_process import InProcessExecutor
from agent_infra.orchestrator.executors.protocol import Execution, ExecutionOutcome
from agent_infra.orchestrator.model import TaskRequest, TaskState
from agent_infra.orchestrator.settings import OrchestratorSettings
from agent_infra.runtime.errors import ResourceExhausted
from agent_infra.wire import orchestrator_pb2 as pb
from agent_infra.wire import orchestrator_pb2_grpc
from prometheus_client import CollectorRegistry

from tests.daemon_support import free_port, running_daemon

BLOB = 64 * 1024


class Recorder:
    """The in-process backend: records each execution; fails the ids in `fail_once` once."""

    def __init__(self) -> None:
        self.calls: list[Execution] = []
        self.fail_once: set[str] = set()
        self.called = asyncio.Condition()
        self.gate = asyncio.Event()  # payloads with "gate" wait for it

    async def __call__(self, execution: Execution) -> ExecutionOutcome:
        async with self.called:
            self.calls.append(execution)
            self.called.notify_all()
        if "gate" in execution.payload:
            await self.gate.wait()
        if execution.execution_id in self.fail_once:
            self.fail_once.discard(execution.execution_id)
            return ExecutionOutcome(False, {"exit_code": "1"}, "exit code 1")
        return ExecutionOutcome(True, {"ran": execution.execution_id}, "")


def settings(tmp_path: Path, concurrency: int, **extra: object) -> OrchestratorSettings:
    return OrchestratorSettings.model_validate({
        "server": {"grpc_addr": "127.0.0.1:1", "http_addr": "127.0.0.1:2"},
        "store": {"data_dir": str(tmp_path)},
        "classes": {"cpu_short": {"concurrency": concurrency}},
        "dispatch": {"retry_initial": "10ms", "retry_max": "50ms"},
        **extra,
    })


@pytest_asyncio.fixture
async def backend() -> Recorder:
    return Recorder()


async def open_orchestrator(tmp_path: Path, backend: Recorder, concurrency: int = 0,
                            **extra: object) -> Orchestrator:
    return await Orchestrator.open(settings(tmp_path, concurrency, **extra), CollectorRegistry(),
                                   InProcessExecutor(backend))


@pytest_asyncio.fixture
async def held(tmp_path: Path, backend: Recorder) -> AsyncIterator[Orchestrator]:
    """An orchestrator whose one class dispatches nothing until reconfigured."""
    orch = await open_orchestrator(tmp_path, backend)
    try:
        yield orch
    finally:
        await orch.close()


# -- pending payloads stay on disk -------------------------------------------------------------


async def test_pending_payloads_are_not_in_memory_and_load_at_dispatch(
        tmp_path: Path, backend: Recorder) -> None:
    payload = {"blob": "x" * BLOB, "retry_on_failure": "true", "max_attempts": "2"}
    orch = await open_orchestrator(tmp_path, backend)
    try:
        returned, _ = await orch.scheduler.submit(TaskRequest("p1", "cpu_short", payload))
        await orch.scheduler.submit(TaskRequest("p2", "cpu_short", {"blob": "y" * BLOB}))
        assert returned.payload == payload  # the caller's answer is unchanged
        # Waiting for their first dispatch, they are queue keys only: no record in memory.
        assert orch.scheduler._live == {}
        assert orch.scheduler.queue_depths()["cpu_short"] == (2, 0)
        assert (await orch.scheduler.get("p2")).status is TaskState.PENDING
    finally:
        await orch.close()

    # A restart reloads what ordering needs, not the tasks and their payloads.
    orch = await open_orchestrator(tmp_path, backend)
    try:
        assert orch.scheduler._live == {}
        assert orch.scheduler.queue_depths()["cpu_short"] == (2, 0)
        backend.fail_once.add("p1")
        settings_now = settings(tmp_path, 1)
        orch.reconfigure(settings_now)
        done = {}
        async with asyncio.timeout(60):
            async for task in orch.watch_tasks(["p1", "p2"], include_completed=True):
                if task.status.terminal:
                    done[task.id] = task
        assert {t: done[t].status for t in done} == {"p1": TaskState.COMPLETED,
                                                      "p2": TaskState.COMPLETED}
        # The payload read at dispatch reached the backend whole, control keys applied:
        # retry_on_failure and max_attempts=2 gave p1 a second run.
        p1_calls = [c for c in backend.calls if c.execution_id.startswith("p1")]
        assert len(p1_calls) == 2
        assert all(c.payload == {"blob": "x" * BLOB} for c in p1_calls)
        assert [c.payload for c in backend.calls if c.execution_id == "p2"] == [
            {"blob": "y" * BLOB}]
    finally:
        await orch.close()


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


async def test_restart_with_many_large_pending_tasks_keeps_rss_low(tmp_path: Path) -> None:
    """200 pending 256 KB tasks (51 MB of payload) do not come back into memory at start."""
    config = tmp_path / "orchestrator.toml"
    config.write_text(f'[store]\ndata_dir = "{tmp_path / "data"}"\n\n[[env_managers]]\n'
                      f'address = "127.0.0.1:{free_port()}"\n\n'
                      "[classes.cpu_short]\nconcurrency = 0\n")
    count, size = 200, 256 * 1024
    async with running_daemon("orchestrator", tmp_path, args=["--config", str(config)]) as first:
        idle = _rss_mb(first.process.pid)
        stub = orchestrator_pb2_grpc.OrchestratorServiceStub(first.channel())
        for start in range(0, count, 20):
            await asyncio.gather(*(stub.SubmitTask(pb.SubmitTaskRequest(
                id=f"big-{i}", payload={"command": "true", "blob": f"{i:08d}" * (size // 8)}),
                timeout=60) for i in range(start, start + 20)))
    async with running_daemon("orchestrator", tmp_path, args=["--config", str(config)]) as second:
        stub = orchestrator_pb2_grpc.OrchestratorServiceStub(second.channel())
        status = await stub.GetTaskStatus(pb.GetTaskStatusRequest(task_id="big-199"), timeout=30)
        assert status.status == "pending"
        recovered = _rss_mb(second.process.pid)
    # Before: the payloads came back with the tasks (+51 MB and more). Now only their rows'
    # metadata does; the margin covers allocator and page-cache noise.
    assert recovered - idle < 25, (idle, recovered)


def _traced_bytes(snapshot_before: tracemalloc.Snapshot, *modules: str) -> int:
    """Bytes allocated since `snapshot_before` (and still held) by lines of these modules."""
    after = tracemalloc.take_snapshot()
    filters = [tracemalloc.Filter(True, f"*/agent_infra/orchestrator/{m}") for m in modules]
    return sum(stat.size_diff for stat in after.filter_traces(filters).compare_to(
        snapshot_before.filter_traces(filters), "filename"))


async def test_a_backlog_costs_queue_keys_not_task_records(tmp_path: Path,
                                                           backend: Recorder) -> None:
    """Each task waiting for its first dispatch holds (priority, seq, id) in memory and no more
    (it held a whole Task record, ~700 bytes of the scheduler's own, before)."""
    count = 2000
    orch = await open_orchestrator(tmp_path, backend)
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for start in range(0, count, 100):
            await asyncio.gather(*(orch.scheduler.submit(TaskRequest(
                f"backlog-{i:05d}", "cpu_short", {"command": "true"}))
                for i in range(start, start + 100)))
        gc.collect()
        held = _traced_bytes(before, "scheduler.py", "model.py", "tasks_repo.py", "store.py")
        assert held / count < 300, f"{held / count:.0f} bytes a pending task"
    finally:
        tracemalloc.stop()
        await orch.close()


async def test_a_long_open_results_stream_holds_nothing_per_finished_task(
        tmp_path: Path, backend: Recorder) -> None:
    """A StreamTaskResults of every task, open for days, remembers nothing of the tasks it has
    passed on (it kept each one's last state for the stream's life before: ~150 bytes a task,
    times every such stream)."""
    count = 1500
    orch = await open_orchestrator(tmp_path, backend, concurrency=8)
    seen: list[str] = []
    progress = asyncio.Condition()
    stream = orch.watch_tasks([], include_completed=False)

    async def read() -> None:
        async for task in stream:
            if task.status.terminal:
                async with progress:
                    seen.append(task.id)
                    progress.notify_all()

    async def seen_at_least(n: int, timeout: float) -> None:
        async with asyncio.timeout(timeout), progress:
            await progress.wait_for(lambda: len(seen) >= n)

    reader = asyncio.create_task(read())
    tracemalloc.start()
    try:
        await orch.scheduler.submit(TaskRequest("warm-up", "cpu_short", {}))
        await seen_at_least(1, 60)
        gc.collect()
        before = tracemalloc.take_snapshot()
        for start in range(0, count, 100):
            await asyncio.gather(*(orch.scheduler.submit(TaskRequest(
                f"done-{i:05d}", "cpu_short", {})) for i in range(start, start + 100)))
        await seen_at_least(count + 1, 120)
        gc.collect()
        held = _traced_bytes(before, "domain.py")
        assert held < 20_000, f"the stream holds {held} bytes after {count} finished tasks"
    finally:
        tracemalloc.stop()
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await orch.close()


# -- results streams are bounded ----------------------------------------------------------------


async def test_unread_results_stream_is_dropped_at_its_bound(tmp_path: Path,
                                                             backend: Recorder) -> None:
    orch = await open_orchestrator(tmp_path, backend, limits={"subscriber_buffer": 10})
    try:
        await orch.scheduler.submit(TaskRequest("first", "cpu_short", {}))
        stream = orch.watch_tasks([], include_completed=False)
        async with asyncio.timeout(30):
            assert (await anext(stream)).id == "first"  # subscribed, and now not reading
        for i in range(30):
            await orch.scheduler.submit(TaskRequest(f"t{i}", "cpu_short", {}))
        # The buffer filled to its bound, then was freed: the stream ends instead of growing.
        assert orch.result_buffers() == [0]
        received = 0
        with pytest.raises(ResourceExhausted, match="subscriber too slow"):
            async with asyncio.timeout(30):
                async for _ in stream:
                    received += 1
        assert received == 0
        assert orch.result_buffers() == []
    finally:
        await orch.close()


# -- retention ----------------------------------------------------------------------------------

DAY = 24 * 3600.0


async def finish_all(orch: Orchestrator, *task_ids: str) -> None:
    async with asyncio.timeout(60):
        async for _ in orch.watch_tasks(list(task_ids), include_completed=True):
            pass  # ends when every named task is terminal


async def stored_ids(orch: Orchestrator) -> set[str]:
    page = await orch.list_tasks(page_size=1000)
    return {task.id for task in page.tasks}


async def test_retention_deletes_old_finished_tasks_but_not_a_live_runs(
        tmp_path: Path, backend: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(domain, "TASK_PRUNE_BATCH", 2)  # several batches
    orch = await open_orchestrator(tmp_path, backend, concurrency=2)
    try:
        for i in range(5):
            await orch.scheduler.submit(TaskRequest(f"old{i}", "cpu_short", {}))
        await orch.scheduler.submit(TaskRequest("waiting", "cpu_short", {"gate": "1"}))
        spec = {"steps": [{"id": "a", "class": "cpu_short", "payload": {}},
                          {"id": "b", "class": "cpu_short", "payload": {"gate": "1"},
                           "depends_on": ["a"]}]}
        await orch.workflows.create("wf", "wf", "", json.dumps(spec).encode())
        run, _ = await orch.workflows.start_run("wf", "", {})
        await finish_all(orch, *(f"old{i}" for i in range(5)))
        async with backend.called:
            await backend.called.wait_for(
                lambda: sum(1 for c in backend.calls if c.payload.get("gate")) == 2)
        run_tasks = {t.id for t in (await orch.list_tasks(page_size=1000)).tasks
                     if t.workflow_id == "wf"}
        assert len(run_tasks) == 2  # a finished, b running: the run is live

        assert await orch.prune_tasks() == 0  # nothing is a week old yet
        # Eight days on: the old tasks go, in batches; the live run's finished step stays,
        # and so does the unfinished task.
        assert await orch.prune_tasks(now=time.time() + 8 * DAY) == 5
        assert await stored_ids(orch) == {"waiting", *run_tasks}

        backend.gate.set()
        await finish_all(orch, "waiting", *run_tasks)
        async with asyncio.timeout(60):
            async for update in orch.workflows.watch(run.run_id):
                if update.status.terminal:
                    break
        # The run is over: its tasks may go now.
        assert await orch.prune_tasks(now=time.time() + 8 * DAY) == 3
        assert await stored_ids(orch) == set()
    finally:
        await orch.close()


async def test_retention_loop_survives_a_failing_round(
        tmp_path: Path, backend: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
    real = tasks_repo.prune_finished
    calls = 0
    pruned = asyncio.Event()

    def flaky(tx: object, cutoff: float, limit: int) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("disk trouble")
        count = real(tx, cutoff, limit)  # type: ignore[arg-type]
        if count:
            pruned.set()
        return count

    monkeypatch.setattr(tasks_repo, "prune_finished", flaky)
    orch = await open_orchestrator(tmp_path, backend, concurrency=1,
                                   retention={"tasks": "10ms", "interval": "20ms"})
    try:
        await orch.scheduler.submit(TaskRequest("gone", "cpu_short", {}))
        async with asyncio.timeout(60):
            await pruned.wait()
        await orch.store.write(lambda tx: None)  # the pruning write is committed
        assert calls >= 2 and "gone" not in await stored_ids(orch)
    finally:
        await orch.close()
