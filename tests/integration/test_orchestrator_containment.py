"""Issue 10, finding 1: an exception inside the workflow engine, a task listener or a class's
dispatch loop ends the one run or task it concerns (failed, with the reason), never the daemon's
loops. In process, on a real SQLite store (the real-daemon versions are in
test_orchestrator_hostile_workflows.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from agent_infra.orchestrator import scheduler as scheduler_module
from agent_infra.orchestrator.domain import Orchestrator
from agent_infra.orchestrator.executors.in_process import InProcessExecutor
from agent_infra.orchestrator.executors.protocol import Execution, ExecutionOutcome
from agent_infra.orchestrator.model import Task, TaskRequest, TaskState
from agent_infra.orchestrator.settings import OrchestratorSettings
from agent_infra.orchestrator.workflows import repository
from agent_infra.orchestrator.workflows.records import Run
from prometheus_client import CollectorRegistry

SPEC = json.dumps({"steps": [{"id": "a", "payload": {"command": "true"}}]}).encode()


async def _ok(execution: Execution) -> ExecutionOutcome:
    return ExecutionOutcome(True, {"stdout": "ok"}, "")


@pytest_asyncio.fixture
async def orchestrator(tmp_path: Path) -> AsyncIterator[Orchestrator]:
    settings = OrchestratorSettings.model_validate({
        "server": {"grpc_addr": "127.0.0.1:1", "http_addr": "127.0.0.1:2"},
        "store": {"data_dir": str(tmp_path)},
        "classes": {"cpu_short": {"concurrency": 2}}})
    orch = await Orchestrator.open(settings, CollectorRegistry(), InProcessExecutor(_ok))
    try:
        yield orch
    finally:
        await orch.close()


async def _final(orch: Orchestrator, run_id: str) -> Run:
    async with asyncio.timeout(30):
        async for run in orch.workflows.watch(run_id):
            last = run
    return last


async def _done(orch: Orchestrator, task_id: str) -> Task:
    async with asyncio.timeout(30):
        async for task in orch.watch_tasks([task_id], include_completed=True):
            if task.status.terminal:
                return task
    raise AssertionError("no terminal state")


async def test_an_engine_error_fails_only_its_run(orchestrator: Orchestrator,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    real = repository.get_workflow

    async def broken(store: Any, workflow_id: str, version: int | None = None) -> Any:
        if workflow_id == "bad":
            raise RuntimeError("engine bug")
        return await real(store, workflow_id, version)

    monkeypatch.setattr(repository, "get_workflow", broken)
    for name in ("bad", "good"):
        await orchestrator.workflows.create(name, name, "", SPEC)
    bad, _ = await orchestrator.workflows.start_run("bad", "k1", {})
    good, _ = await orchestrator.workflows.start_run("good", "k2", {})
    failed = await _final(orchestrator, bad.run_id)
    assert failed.status.value == "failed" and "engine bug" in failed.error
    assert (await _final(orchestrator, good.run_id)).status.value == "completed"


async def test_a_failing_listener_does_not_stop_tasks(orchestrator: Orchestrator) -> None:
    def broken(task: Task) -> None:
        raise RuntimeError("listener bug")

    orchestrator.scheduler.listeners.insert(0, broken)
    await orchestrator.scheduler.submit(TaskRequest("t1", "cpu_short", {}))
    assert (await _done(orchestrator, "t1")).status is TaskState.COMPLETED


async def test_a_dispatch_loop_survives_an_executor_error(
        orchestrator: Orchestrator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scheduler_module, "DISPATCH_ERROR_PAUSE", 0.01)
    executor = orchestrator.executor
    real = executor.wait_until_available
    failures = [RuntimeError("executor bug")]

    async def flaky(task_class: str) -> None:
        if failures:
            raise failures.pop()
        await real(task_class)

    monkeypatch.setattr(executor, "wait_until_available", flaky)
    await orchestrator.scheduler.submit(TaskRequest("t2", "cpu_short", {}))
    assert (await _done(orchestrator, "t2")).status is TaskState.COMPLETED
    assert not failures
