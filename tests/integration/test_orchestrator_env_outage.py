"""env-manager down for 10 s mid-run: tasks wait (none fails), then all complete, each once.

env-manager listens on a port chosen up front, so the one started after the outage has the
address the orchestrator was given, and the same state dir (it adopts the task containers the
stopped one left running).
"""

from __future__ import annotations

import asyncio
import collections
import time
from pathlib import Path

import pytest
from agent_infra.wire import orchestrator_pb2 as pb

from tests.orchestrator_support import (
    IO_MOUNT,
    list_tasks,
    new_id,
    orchestrator_stack,
    submit,
    wait_done,
    wait_status,
)

pytestmark = pytest.mark.docker  # real daemons and containers

OUTAGE_S = 10.0


@pytest.mark.timeout(600)
async def test_tasks_wait_for_env_manager_and_then_complete(tmp_path: Path) -> None:
    async with orchestrator_stack(tmp_path, classes={"cpu_short": {"concurrency": 2}}) as stack:
        before = [new_id("before") for _ in range(6)]
        for task_id in before:
            await submit(stack.stub, task_id, f"sleep 1; echo {task_id} >> {IO_MOUNT}/log")
        await wait_status(stack.stub, before[0], "running")

        await stack.stop_env_manager()
        down_since = time.monotonic()
        during = [new_id("during") for _ in range(4)]
        for task_id in during:
            await submit(stack.stub, task_id, f"echo {task_id} >> {IO_MOUNT}/log")
        everything = [*before, *during]

        # The outage itself is what is tested: sample the tasks, and Health, all through it.
        samples: list[collections.Counter[str]] = []
        health_states: list[str] = []
        while time.monotonic() - down_since < OUTAGE_S:
            tasks = [t for t in await list_tasks(stack.stub) if t.task_id in everything]
            samples.append(collections.Counter(t.status for t in tasks))
            health = await stack.stub.Health(pb.HealthRequest(), timeout=30)
            # Still taking and storing work: healthy; the endpoint's state says the outage.
            assert health.healthy, health
            health_states.append(health.services[f"env-manager {stack.env_manager_addr}"])
            await asyncio.sleep(0.5)
        assert all(sample["failed"] == 0 for sample in samples), samples
        assert samples[-1]["pending"] + samples[-1]["running"] > 0, samples
        metrics = await stack.stub.GetMetrics(pb.GetMetricsRequest(
            metric_names=["failed.cpu_short"]), timeout=30)
        assert metrics.metrics["failed.cpu_short"] == 0

        await stack.start_env_manager()
        results = await wait_done(stack.stub, everything, timeout=300)
        assert {r.status for r in results.values()} == {"completed"}, {
            r.task_id: (r.status, r.error) for r in results.values()}
        assert collections.Counter(stack.io_lines()) == collections.Counter(everything)
        # Waiting is not retrying: a task may lose the one attempt that was under way (or that
        # found env-manager gone), but none is dispatched again and again into the outage.
        attempts = {r.task_id: r.attempts for r in results.values()}
        assert max(attempts.values()) <= 2, attempts
        # Health said so all through the outage.
        assert all(state.startswith("UNAVAILABLE") for state in health_states), health_states

        health = await stack.stub.Health(pb.HealthRequest(), timeout=30)
        assert health.healthy, health
