"""The scheduler on a real SQLite store with an in-process executor: ordering, limits, retries."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from agent_infra.orchestrator.domain import Orchestrator
from agent_infra.orchestrator.executors.in_process import InProcessExecutor
from agent_infra.orchestrator.executors.protocol import (
    Execution,
    ExecutionOutcome,
    TransientFailure,
)
from agent_infra.orchestrator.model import Task, TaskRequest, TaskState
from agent_infra.orchestrator.settings import OrchestratorSettings
from agent_infra.runtime.errors import AlreadyExists, InvalidArgument
from prometheus_client import CollectorRegistry


class Behaviour:
    """What the fake backend does per execution id; records every call."""

    def __init__(self) -> None:
        self.calls: list[Execution] = []
        self.gates: dict[str, asyncio.Event] = {}
        self.failures: dict[str, list[str]] = {}  # execution id -> queue of "transient"/"fail"
        self.running = 0
        self.max_running = 0
        self._called = asyncio.Event()

    async def wait_calls(self, count: int) -> None:
        async with asyncio.timeout(10):
            while len(self.calls) < count:
                self._called.clear()
                await self._called.wait()

    async def __call__(self, execution: Execution) -> ExecutionOutcome:
        self.calls.append(execution)
        self._called.set()
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            gate = self.gates.get(execution.payload.get("gate", ""))
            if gate is not None:
                await gate.wait()
            plan = self.failures.get(execution.execution_id, [])
            if plan:
                what = plan.pop(0)
                if what == "transient":
                    raise TransientFailure("backend unreachable")
                return ExecutionOutcome(False, {"exit_code": "1"}, "exit code 1")
            return ExecutionOutcome(True, {"ran": execution.execution_id}, "")
        finally:
            self.running -= 1


def settings(tmp_path: Path, **classes: dict[str, object]) -> OrchestratorSettings:
    return OrchestratorSettings.model_validate({
        "server": {"grpc_addr": "127.0.0.1:1", "http_addr": "127.0.0.1:2"},
        "store": {"data_dir": str(tmp_path)},
        "classes": classes or {"cpu_short": {"concurrency": 2}},
        "dispatch": {"retry_initial": "10ms", "retry_max": "50ms"},
    })


@pytest_asyncio.fixture
async def backend() -> Behaviour:
    return Behaviour()


@pytest_asyncio.fixture
async def orchestrator(tmp_path: Path, backend: Behaviour) -> AsyncIterator[Orchestrator]:
    orch = await Orchestrator.open(settings(tmp_path, cpu_short={"concurrency": 1},
                                            cpu_long={"concurrency": 1}),
                                   CollectorRegistry(), InProcessExecutor(backend))
    try:
        yield orch
    finally:
        await orch.close()


async def wait_terminal(orch: Orchestrator, *task_ids: str) -> list[Task]:
    done: dict[str, Task] = {}
    async with asyncio.timeout(30):
        async for task in orch.watch_tasks(list(task_ids), include_completed=True):
            if task.status.terminal:
                done[task.id] = task
    return [done[t] for t in task_ids]


async def test_priority_then_submit_order(orchestrator: Orchestrator, backend: Behaviour) -> None:
    backend.gates["hold"] = asyncio.Event()
    await orchestrator.scheduler.submit(TaskRequest("blocker", "cpu_short", {"gate": "hold"}))
    order = [("low", 0), ("high", 10), ("mid", 5), ("high2", 10), ("low2", 0)]
    for task_id, priority in order:
        await orchestrator.scheduler.submit(TaskRequest(task_id, "cpu_short", {}, priority))
    backend.gates["hold"].set()
    await wait_terminal(orchestrator, *(t for t, _ in order))
    started = [c.execution_id for c in backend.calls]
    assert started == ["blocker", "high", "high2", "mid", "low", "low2"]


async def test_class_limit_and_no_starvation(tmp_path: Path, backend: Behaviour) -> None:
    orch = await Orchestrator.open(settings(tmp_path, cpu_short={"concurrency": 2},
                                            cpu_long={"concurrency": 1}),
                                   CollectorRegistry(), InProcessExecutor(backend))
    try:
        backend.gates["hold"] = asyncio.Event()
        ids = [f"s{i}" for i in range(6)]
        for task_id in ids:
            await orch.scheduler.submit(TaskRequest(task_id, "cpu_short", {"gate": "hold"}))
        await orch.scheduler.submit(TaskRequest("long", "cpu_long", {}))
        # cpu_short is saturated, yet cpu_long's task runs.
        [long_task] = await wait_terminal(orch, "long")
        assert long_task.status is TaskState.COMPLETED
        assert orch.scheduler.queue_depths()["cpu_short"] == (4, 2)
        backend.gates["hold"].set()
        await wait_terminal(orch, *ids)
        assert backend.max_running <= 3  # 2 cpu_short + 1 cpu_long at most
    finally:
        await orch.close()


async def test_transient_failures_retry_the_same_execution(
    orchestrator: Orchestrator, backend: Behaviour
) -> None:
    backend.failures["flaky"] = ["transient", "transient"]
    await orchestrator.scheduler.submit(TaskRequest("flaky", "cpu_short", {}, max_attempts=5))
    [task] = await wait_terminal(orchestrator, "flaky")
    assert task.status is TaskState.COMPLETED
    assert task.attempts == 3
    assert [c.execution_id for c in backend.calls] == ["flaky"] * 3


async def test_transient_failures_give_up_at_max_attempts(
    orchestrator: Orchestrator, backend: Behaviour
) -> None:
    backend.failures["down"] = ["transient"] * 10
    await orchestrator.scheduler.submit(TaskRequest("down", "cpu_short", {}, max_attempts=3))
    [task] = await wait_terminal(orchestrator, "down")
    assert task.status is TaskState.FAILED
    assert "gave up after 3 attempts" in task.error


async def test_task_failure_is_final_unless_the_payload_asks_for_retries(
    orchestrator: Orchestrator, backend: Behaviour
) -> None:
    backend.failures["once"] = ["fail"]
    backend.failures["again"] = ["fail"]
    await orchestrator.scheduler.submit(TaskRequest("once", "cpu_short", {}))
    await orchestrator.scheduler.submit(
        TaskRequest("again", "cpu_short", {"retry_on_failure": "true"}))
    once, again = await wait_terminal(orchestrator, "once", "again")
    assert once.status is TaskState.FAILED and once.error == "exit code 1"
    assert again.status is TaskState.COMPLETED
    # A retried failure is a fresh execution, so env-manager runs it rather than returning the
    # stored failure; control keys never reach the executor.
    assert [c.execution_id for c in backend.calls if "again" in c.execution_id] == [
        "again", "again:r1"]
    assert all("retry_on_failure" not in c.payload for c in backend.calls)


async def test_one_broken_task_does_not_affect_others(tmp_path: Path) -> None:
    async def handler(execution: Execution) -> ExecutionOutcome:
        if execution.execution_id == "boom":
            raise RuntimeError("executor bug")
        return ExecutionOutcome(True, {}, "")

    orch = await Orchestrator.open(settings(tmp_path), CollectorRegistry(),
                                   InProcessExecutor(handler))
    try:
        for task_id in ("before", "boom", "after"):
            await orch.scheduler.submit(TaskRequest(task_id, "cpu_short", {}))
        before, boom, after = await wait_terminal(orch, "before", "boom", "after")
        assert boom.status is TaskState.FAILED and "executor bug" in boom.error
        assert before.status is after.status is TaskState.COMPLETED
    finally:
        await orch.close()


async def test_idempotent_submit_and_conflicts(orchestrator: Orchestrator) -> None:
    first, created = await orchestrator.scheduler.submit(
        TaskRequest("same", "cpu_short", {"a": "1"}))
    again, created_again = await orchestrator.scheduler.submit(
        TaskRequest("same", "cpu_short", {"a": "1"}))
    assert created and not created_again and again.id == first.id
    with pytest.raises(AlreadyExists):
        await orchestrator.scheduler.submit(TaskRequest("same", "cpu_short", {"a": "2"}))
    with pytest.raises(InvalidArgument, match="id must be"):
        await orchestrator.scheduler.submit(TaskRequest("bad\n", "cpu_short", {}))
    generated, _ = await orchestrator.scheduler.submit(TaskRequest("", "cpu_short", {}))
    assert generated.id.startswith("task-")


async def test_cancel_pending_and_running(orchestrator: Orchestrator, backend: Behaviour) -> None:
    backend.gates["hold"] = asyncio.Event()
    await orchestrator.scheduler.submit(TaskRequest("runs", "cpu_short", {"gate": "hold"}))
    await orchestrator.scheduler.submit(TaskRequest("waits", "cpu_short", {}))
    await backend.wait_calls(1)
    waits = await orchestrator.scheduler.cancel("waits")
    runs = await orchestrator.scheduler.cancel("runs")
    assert waits.status is runs.status is TaskState.CANCELLED
    stored = await orchestrator.scheduler.get("runs")
    assert stored.status is TaskState.CANCELLED
    assert [c.execution_id for c in backend.calls] == ["runs"]


async def test_restart_requeues_unfinished_under_the_same_execution(
    tmp_path: Path, backend: Behaviour
) -> None:
    backend.gates["hold"] = asyncio.Event()
    first = await Orchestrator.open(settings(tmp_path), CollectorRegistry(),
                                    InProcessExecutor(backend))
    await first.scheduler.submit(TaskRequest("interrupted", "cpu_short", {"gate": "hold"}))
    await first.scheduler.submit(TaskRequest("queued", "cpu_short", {"gate": "hold"}))
    await first.scheduler.submit(TaskRequest("third", "cpu_short", {"gate": "hold"}))
    await backend.wait_calls(2)
    await first.close()  # as if it died: running tasks stay "running" in the store

    backend.gates["hold"].set()
    second = await Orchestrator.open(settings(tmp_path), CollectorRegistry(),
                                     InProcessExecutor(backend))
    try:
        tasks = await wait_terminal(second, "interrupted", "queued", "third")
        assert all(t.status is TaskState.COMPLETED for t in tasks)
        interrupted = [c for c in backend.calls if c.execution_id.startswith("interrupted")]
        assert {c.execution_id for c in interrupted} == {"interrupted"}
        assert tasks[0].attempts == 1, "a resumed dispatch is not a new attempt"
    finally:
        await second.close()
